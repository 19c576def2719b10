"""Ray Tune sweeps over any pipeline-config field (``rlhf-ray tune``).

    spec.py      the sweep file (tune_configs/*.yaml), typed and checked before Ray starts
    space.py     search-space parsing and checking (dotted config paths, distributions)
    trial.py     the function trainable: a trial trains its stages, one Tune result per validation
    sweep.py     prepare shared checkpoints, run/continue the Tune experiment
    results.py   trial table, Pareto front, selection on validation, test once, best export
    plots.py     objective-vs-knob, learning curves and Pareto PNGs
    cli.py       ``rlhf-ray tune``
"""

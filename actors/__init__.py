"""Ray actors for PPO (PageLLM): thin wrappers over :mod:`rlhf_ray`.

    group.py        ModelGroup: N actors of one role, one torch.distributed group, placement, fan-out
    placement.py    colocated (one shared placement group) or spread layout of the roles
    batching.py     split / take / concat of batches (tensors, lists, dataclasses)
    experience.py   the prompt batch, the Experience batch, token rewards, KL, GAE assembly (pure torch)
    advantage.py    that assembly as a Ray task beside the data (the Experience stays in the object store)
    ledger.py       what the driver fetches and puts (bytes, tensors), reported per iteration
    models.py       SFT policy loading (dropout off), the critic (backbone + value head)
    trainer.py      what the policy and critic ranks share: Engine, minibatch loop, state
    policy.py critic.py reference.py reward.py rollout.py     the role actors
    monitor.py      reward-hacking monitor
    state.py        resumable state directories under OUT/state
    orchestrator.py the PPO controller
    cli.py          ``rlhf-ray ppo``

Import direction: actors -> rlhf_ray, never the reverse.
"""

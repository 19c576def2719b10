"""Data layer: raw sources -> filtered, split, head/tail-labelled Parquet.

Imports numpy/pandas/pyarrow only (never Ray or torch), so it tests alone.

Prepared directory (``rlhf-ray data prepare --out DIR``), the contract every
stage reads through :func:`rlhf_ray.data.prepared.load_prepared`:

``items.parquet``       one row per item, ordered by ``item_idx`` (0..n_items-1)
    item (str, original id), item_idx (int64), title (str), category (str, primary
    category, "unknown" if none), categories (list[str]), popularity (int64, number
    of *training* interactions), is_tail (bool: among the ``tail_fraction`` least
    frequent training items)
``users.parquet``       user (str), user_idx (int64 0..n_users-1)
``sequences.parquet``   one row per user, chronological:
    user_idx, items (list[int64] item_idx), ratings (list[float]), timestamps
    (list[int64]), valid_start, test_start, end (int64 positions into the lists).
    train history = items[:valid_start]; validation targets = positives in
    items[valid_start:test_start] with history items[:valid_start]; test targets =
    positives in items[test_start:end] with history items[:test_start].
    Leave-one-out: test_start = last positive, valid_start = second-last positive,
    end = test_start + 1.
``interactions.parquet`` the filtered interactions: user, item, rating, timestamp
``stats.json``          counts before/after filtering, density, head/tail counts,
    config, and ``fingerprint`` (sha256 over the Parquet files' content)
"""

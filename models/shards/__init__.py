"""The shard format and the data plumbing every job shares (the bottom layer, beside the model).

``format``: what a shard holds (member names, dtypes, shapes, the meta schema and its version),
writing a sample and reading one back. ``images``: decoding a view, premultiplying, compositing.
``urls``: expanding shard paths, globs and URLs. ``tar_stream``: the fast tar reader. data_prep
writes shards, training and evaluation read them, all through these modules (docs/shards.md).
"""

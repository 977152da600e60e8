"""The avatar format: LiveTalking's directory layout, its TAR archives and the workers' local cache.

Three doors:

- ``layout``: the format: names, limits, frame naming, ``AvatarWriter`` (every writer of an avatar directory
  uses it), ``coords.pkl``, single entries read within the limits (frame lists, image sizes from headers, JSON)
- ``reader``: the safe reader: checking and describing a directory (``validate_avatar_dir``, ``load_avatar``),
  MuseTalk material and latents read without trusting them
- ``cache``: the workers' local cache (owner-keyed immutable versions, holds, installs, sweeping) and the
  hand-placed ``{root}/{avatar_id}`` folders it serves

Behind and beside them: ``box_pickle`` (our own decoder of box-list pickles: no pickle machinery runs on a
user's bytes), ``archive`` (packing and safe unpacking of avatar TARs, plain or compressed; ``unpack_avatar``)
and ``livetalking`` (an avatar rewritten for LiveTalking's loaders). Material for other engines gets its reader
in ``reader`` and its names in ``layout``.
"""

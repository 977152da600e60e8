"""The avatar format: LiveTalking's directory layout, its TAR archives and the workers' local cache.

- ``layout``: names, frame naming, ``AvatarWriter`` (every writer of an avatar directory uses it)
- ``images``: PNG / JPEG sizes read from their headers, never decoding pixels
- ``box_pickle``: our own decoder of box-list pickles (no pickle machinery runs on a user's bytes)
- ``coords``: ``coords.pkl`` (and MuseTalk's ``mask_coords.pkl``: ``read_boxes_file``)
- ``validate``: checking and describing an avatar directory
- ``archive``: packing and safe unpacking of avatar TARs (plain or compressed)
- ``cache``: the workers' local cache (owner-keyed immutable versions, holds, installs, sweeping)
- ``flat``: LiveTalking's own ``{root}/{avatar_id}`` folders (recover-avatars writes them, the cache reads them)

Material for other engines (MuseTalk latents and masks, LivePortrait features) gets a module of its own
here, beside the layout it extends.
"""

"""The avatar format: LiveTalking's directory layout, its TAR archives and the workers' local cache.

- ``layout``: names, frame naming, ``AvatarWriter`` (every writer of an avatar directory uses it)
- ``images``: PNG / JPEG sizes read from their headers, never decoding pixels
- ``coords``: ``coords.pkl`` (and MuseTalk's ``mask_coords.pkl``) read without pickle machinery
- ``validate``: checking and describing an avatar directory
- ``archive``: packing and safe unpacking of avatar TARs
- ``cache``: the workers' local cache (install, locks, ownership)

Material for other engines (MuseTalk latents and masks, LivePortrait features) gets a module of its own
here, beside the layout it extends.
"""

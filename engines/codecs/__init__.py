"""Media codecs: audio decoding and video/audio encoding with PyAV."""

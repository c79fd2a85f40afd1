"""Images and audio: decoding, limits, resizing to the token budget, patches and frames.

The interface (import from the submodules; this package imports nothing, so `import g4rt` never
loads Pillow or libsndfile):

    g4rt.media.image
        load_image(source, *, name=None, max_bytes=None, max_pixels=None) -> np.ndarray uint8 [H, W, 3]
        prepare_image(rgb, *, patch, min_tokens=None, max_tokens=None, resize=True, name="image")
            -> PreparedImage: pixel_values float32 [N, patch*patch*3] (each patch in (row, col, channel)
               order, patches row-major), positions int32 [N, 2] as (x=col, y=row), rows, cols,
               n_tokens, sha256 (prompt-cache key), height/width (after resize), source_height/width
    g4rt.media.budget
        target_size(height, width, patch, *, max_tokens=None, min_tokens=None) -> (height', width')
            max_tokens defaults to 280; min_tokens None = transformers' fill-the-budget rule, set =
            llama.cpp's keep-if-within-[min, max] rule (--image-min-tokens / --image-max-tokens)
    g4rt.media.audio
        load_audio(source, *, name=None, max_seconds=None, max_bytes=None) -> np.ndarray float32 mono 16 kHz
        audio_frames(samples, frame=640) -> np.ndarray float32 [ceil(n / 640), 640]
        audio_sha256(samples) -> str
        log_mel(samples, n_mels=128) -> LogMel(features float32 [T, n_mels], mask bool [T])
    g4rt.media.errors
        MediaError(G4rtError): .reason (one of REASONS), .media (the name used), .detail

`patch` is the pixel side of one soft token: 48 for the real 12B (16 x 3), 12 for the g4u-mm
fixtures (the GGUF's clip.vision.patch_size 4 x llama.cpp's hard-coded n_merge 3). `source` is the
file's bytes or a path. Every bad input raises MediaError naming the medium and the problem.
"""

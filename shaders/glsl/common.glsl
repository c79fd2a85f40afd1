// Shared helpers for every g4rt compute shader.
//
// Grids are "grid-stride": a kernel walks its work items as
//   for (uint it = G4_WG_ID; it < n_items; it += G4_WG_STRIDE)
// so the dispatch size (fixed when a pipeline is created) is only a power-of-two bucket of the
// work, and one pipeline serves every batch size of the same bucket. The runtime dispatches at
// least as many workgroups as items (a 2-D grid past 65535), so each workgroup normally runs one
// item: llvmpipe (lavapipe) silently ends any loop nest after 65535 iterations per invocation, so
// kernels keep their per-invocation loop trip counts well below that (small fixed loops are
// unrolled).
//
// Activations are f32 words in "arena" buffers; every operand is addressed by a word offset and a
// row stride passed in push constants (the runtime packs buffers into a few arenas).

#define G4_WG_ID (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x)
#define G4_WG_STRIDE (gl_NumWorkGroups.x * gl_NumWorkGroups.y)

// Tanh that neither overflows nor loses its sign for large |x| (some drivers compute
// tanh as (e^x - e^-x) / (e^x + e^-x), which gives inf/inf = NaN past |x| ~ 44).
float g4_tanh(float x) {
    return tanh(clamp(x, -15.0, 15.0));
}

const float G4_GELU_C = 0.7978845608028654;   // sqrt(2/pi)

float g4_gelu(float x) {
    return 0.5 * x * (1.0 + g4_tanh(G4_GELU_C * (x + 0.044715 * x * x * x)));
}

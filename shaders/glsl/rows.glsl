// Where each batch row sits (ops.Segment): the parameters buffer holds, from word params[2], four
// words per row: its position, its sequence's KV cache slot, the first row of its segment and
// the segment's row count. One sequence: position pos0 + row, slot 0, segment 0 .. n - 1.
// Needs `params` (binding 0) declared first.
uint row_word(uint row, uint k) { return params[params[2] + 4u * row + k]; }
uint row_pos(uint row) { return row_word(row, 0u); }
uint row_slot(uint row) { return row_word(row, 1u); }
uint row_seg0(uint row) { return row_word(row, 2u); }
uint row_segn(uint row) { return row_word(row, 3u); }

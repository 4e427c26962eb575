/* Parameter structs shared by the kernels and Rust: one struct per kernel family, passed by
 * value. Plain C (stdint only) so bindgen mirrors it; `src/ffi/params.rs` is generated from
 * this file by scripts/gen-bindings.sh and both sides assert sizes and offsets.
 *
 * Conventions: element strides (not bytes); pointers are device pointers on the GPU and
 * guarded host pointers under the emulator. */
#ifndef SPARSE_ATTN_PARAMS_H
#define SPARSE_ATTN_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Launch constants shared by the kernels and the Rust planner (the one definition of each).
 * Forward: a block of SA_FWD_THREADS threads (4 warps) owns the query rows of one tile and
 * streams kv tiles of SA_FWD_BLOCK_N keys. Three tile shapes (src/kernels.rs: fwd_tiles):
 * prefill blocks hold SA_FWD_BLOCK_M_PREFILL rows (32 per warp, so each K/V fragment feeds two
 * MMAs), decode blocks SA_FWD_BLOCK_M_DECODE rows (16 per warp: short queries and GQA-packed
 * decode waste no rows), and step blocks (decode steps of at most 16 rows: a token's packed
 * query heads) one warp of SA_FWD_BLOCK_M_STEP rows in SA_FWD_THREADS_STEP threads, so a
 * memory-bound step keeps 3-8 blocks' K/V tiles in flight per SM instead of 1-2.
 * Dynamic shared memory is SA_FWD_SMEM_ROWS_* rows of head_dim 16-bit elements: the Q tile,
 * one K tile and one V tile (K and V loads interleave with the two GEMMs, as in
 * FlashAttention-2); step blocks up to head_dim SA_FWD_STAGED_MAX_D hold SA_FWD_KV_STAGES_STEP
 * of each (SA_FWD_SMEM_ROWS_STEP_STAGED), so 2 x stages - 1 K/V tile loads are in flight while
 * a tile is computed instead of one.
 * Combine: SA_COMBINE_THREADS threads per block, one warp per (query row, head). */
/** The launch constants of the forward and combine kernels. */
typedef enum SaLaunchConsts {
  /** Query rows per prefill block (4 warps x 32 rows). */
  SA_FWD_BLOCK_M_PREFILL = 128,
  /** Query rows per decode block (4 warps x 16 rows). */
  SA_FWD_BLOCK_M_DECODE = 64,
  /** Keys per kv tile. */
  SA_FWD_BLOCK_N = 64,
  /** Threads per forward block. */
  SA_FWD_THREADS = 128,
  /** Dynamic shared memory of a prefill block, in rows of head_dim 16-bit elements. */
  SA_FWD_SMEM_ROWS_PREFILL = SA_FWD_BLOCK_M_PREFILL + 2 * SA_FWD_BLOCK_N,
  /** Dynamic shared memory of a decode block, in rows of head_dim 16-bit elements. */
  SA_FWD_SMEM_ROWS_DECODE = SA_FWD_BLOCK_M_DECODE + 2 * SA_FWD_BLOCK_N,
  /** Query rows per step block (one warp of 16 rows). */
  SA_FWD_BLOCK_M_STEP = 16,
  /** Threads per step block (one warp). */
  SA_FWD_THREADS_STEP = 32,
  /** Dynamic shared memory of a step block, in rows of head_dim 16-bit elements. */
  SA_FWD_SMEM_ROWS_STEP = SA_FWD_BLOCK_M_STEP + 2 * SA_FWD_BLOCK_N,
  /** K and V tile buffers of a staged step block. */
  SA_FWD_KV_STAGES_STEP = 2,
  /** The largest head_dim whose step blocks are staged (head_dim 256's two stages would take
   * 136 KB: above the 99 KB of sm_86/sm_89, and one block per SM). */
  SA_FWD_STAGED_MAX_D = 128,
  /** Dynamic shared memory of a staged step block, in rows of head_dim 16-bit elements. */
  SA_FWD_SMEM_ROWS_STEP_STAGED = SA_FWD_BLOCK_M_STEP + 2 * SA_FWD_KV_STAGES_STEP * SA_FWD_BLOCK_N,
  /** Threads per combine block (one warp per (query row, head)). */
  SA_COMBINE_THREADS = 128
} SaLaunchConsts;

/** Where a forward block's kv-tile walk comes from (SaAttnFwdParams::walk). */
typedef enum SaWalk {
  /** The compiled CSR lists and tile views of the plan's lengths. */
  SA_WALK_LISTS = 0,
  /** Derived on the device from the run-time lengths and the mask program. */
  SA_WALK_RUNTIME = 1
} SaWalk;

/** The kind of a SaMaskComponent. */
typedef enum SaMaskKind {
  /** Every key. */
  SA_MASK_DENSE = 0,
  /** Keys within window_left before and window_right after the query. */
  SA_MASK_WINDOW = 1,
  /** The first sink_count keys. */
  SA_MASK_SINKS = 2,
  /** Global tokens: the key or the query is in the table. */
  SA_MASK_GLOBAL = 3,
  /** Keys whose distance to the query is a multiple of dilation_stride. */
  SA_MASK_DILATED = 4,
  /** A bit table over (query block, key block). */
  SA_MASK_BLOCK_MASK = 5,
  /** BigBird: block window, global blocks and a table of random blocks. */
  SA_MASK_BIGBIRD = 6,
  /** Chunked (Llama 4): keys of the query's own chunk of block_q positions,
   * floor(p / block_q) == floor(j / block_q). */
  SA_MASK_CHUNKED = 7
} SaMaskKind;

/** One pattern component as kernel data (fields a kind does not use are 0). */
typedef struct SaMaskComponent {
  /** A SaMaskKind tag. */
  int32_t kind;
  /** Window: keys this far before the query are allowed. */
  int32_t window_left;
  /** Window: keys this far after the query are allowed (0 under causality). */
  int32_t window_right;
  /** Sinks: the first `sink_count` keys. */
  int32_t sink_count;
  /** Dilated: the stride (>= 1). */
  int32_t dilation_stride;
  /** Block mask: query positions per mask row; BigBird: the block size. */
  int32_t block_q;
  /** Block mask: keys per mask column; BigBird: the block size. */
  int32_t block_k;
  /** Block mask: mask rows (query blocks). */
  int32_t mask_rows;
  /** Block mask: mask columns (key blocks). */
  int32_t mask_cols;
  /** BigBird: `window_blocks / 2`. */
  int32_t bigbird_window_half;
  /** BigBird: global blocks (leading query and key blocks). */
  int32_t bigbird_global_blocks;
  /** BigBird: query block of the random table's first row. */
  int32_t rand_first_q_block;
  /** BigBird: rows of the random table (query blocks of the shape). */
  int32_t rand_q_blocks;
  /** Start of this component's table in the shared mask data. */
  int32_t data_offset;
  /** Length of that table (Global: the token count). */
  int32_t data_len;
  /** Keeps the struct at 64 bytes; always 0. */
  int32_t _reserved;
} SaMaskComponent;

/** The predicate of one row set: `components[first_component ..][.. num_components]`. */
typedef struct SaMaskProgram {
  /** 1: keys after the query position (j > p) are excluded. */
  int32_t causal;
  /** Index of the first component. */
  int32_t first_component;
  /** Number of components (the union of which is allowed); at least 1. */
  int32_t num_components;
  /** Keeps the struct at 16 bytes; always 0. */
  int32_t _reserved;
} SaMaskProgram;

/** How one query tile (one CSR row of the block-sparse metadata) names its query rows and its
 * keys; src/pattern/view.rs is the Rust twin. Most tiles are *natural* (rows row_first ..
 * row_first + row_count - 1, keys 0 .. kv_len - 1 in order); views let dilated and global
 * patterns cost work proportional to what they allow:
 * - rows: slot s < row_count of the tile is query row row_first + s * row_step, or, when
 *   row_step == 0, `view_data[row_list + s]`. Slots >= row_count are padding (never written).
 *   Over a (sequence, row set) the tiles own every query row exactly once.
 * - keys: a kv-tile index t >= 0 in the CSR lists covers view keys v = t * SA_FWD_BLOCK_N + c
 *   (c < SA_FWD_BLOCK_N), key position key_first + v * key_step, existing for v < key_count
 *   (a dilated head's residue class is key_first = class, key_step = stride). An index t < 0
 *   is a *gathered* tile: column c is key `view_data[gather_list + (-t - 1) * SA_FWD_BLOCK_N + c]`,
 *   existing for (-t - 1) * SA_FWD_BLOCK_N + c < gather_count (global key columns the
 *   regular tiles of this row do not cover). A row's tiles never name one key twice. */
typedef struct SaTileView {
  /** Query row of slot 0 (affine rows). */
  int32_t row_first;
  /** Row distance between slots; 0: rows come from `view_data[row_list ..]`. */
  int32_t row_step;
  /** Slots holding a query row; later slots are padding. */
  int32_t row_count;
  /** Start of the row list in view_data (row_step == 0). */
  int32_t row_list;
  /** Key position of view key 0. */
  int32_t key_first;
  /** Key distance between consecutive view keys (a dilated class's stride; 1: natural). */
  int32_t key_step;
  /** View keys that exist. */
  int32_t key_count;
  /** Start of this tile's gathered keys in view_data. */
  int32_t gather_list;
  /** Gathered keys that exist. */
  int32_t gather_count;
  /** Keeps the struct at 40 bytes; always 0. */
  int32_t _reserved;
} SaTileView;

/** A paged KV cache as the kernels read it (src/kv_cache is the owner and the Rust twin of
 * the mapping). Pages hold `page_size` consecutive token positions of every kv head:
 * k_pages, v_pages are `[num_pages, num_kv_heads, page_size, head_dim]` (a head's rows of a page
 * are contiguous, so a kv tile is a few contiguous runs). Sequence b's logical page L (token
 * positions L * page_size ..) lives in physical page block_table[b * block_table_stride +
 * slot(L)], where slot(L) = L for L < sink_pages or ring_pages == 0, else
 * sink_pages + (L - sink_pages) % ring_pages: windowed layers keep their sink pages and a ring
 * of the most recent ring_pages pages; older positions are evicted and never read (their rows
 * are zero-filled in the tile, and the pattern never allows them). */
typedef struct SaPagedKv {
  /** K pages `[num_pages, num_kv_heads, page_size, head_dim]`. */
  const void* k_pages;
  /** V pages, laid out like k_pages. */
  const void* v_pages;
  /** int32 `[batch, block_table_stride]` physical pages; NULL: K/V are the contiguous k, v. */
  const int32_t* block_table;
  /** Elements per page: num_kv_heads * page_size * head_dim. */
  int64_t page_stride;
  /** Elements per kv head within a page: page_size * head_dim. */
  int64_t page_head_stride;
  /** Slots per sequence row of block_table. */
  int32_t block_table_stride;
  /** Tokens per page: a power of two, 8 .. 256. */
  int32_t page_size;
  /** log2(page_size). */
  int32_t log2_page_size;
  /** Leading logical pages kept for good (sinks) before the ring. */
  int32_t sink_pages;
  /** Pages of the ring of most recent positions; 0: every logical page has its own slot. */
  int32_t ring_pages;
  /** Pages in the pool; > 0: a block-table entry outside [0, num_pages) is never read (the
   * keys it would hold are zero-filled, as evicted ones), so bad table data already on the
   * device cannot make a launch read outside the pool; 0: entries are trusted (checked on
   * the host). */
  int32_t num_pages;
} SaPagedKv;

/** Forward attention over a batch: out = softmax(mask(scale * q k^T)) v, plus the row LSE. */
typedef struct SaAttnFwdParams {
  /* Tensors: q [batch, q_len, num_heads, head_dim]; k, v [batch, kv_len, num_kv_heads,
   * head_dim]; out like q. With varlen (cu_seqlens_q != NULL) the batch dimension is packed
   * away: q is [total_q, num_heads, head_dim] and sequence b owns rows
   * cu_seqlens_q[b] .. cu_seqlens_q[b + 1] (likewise k/v with cu_seqlens_k). */
  /** Queries (f16 or bf16, the instantiation's type). */
  const void* q;
  /** Keys (when not paged). */
  const void* k;
  /** Values (when not paged). */
  const void* v;
  /** Output, laid out like q. */
  void* out;
  /** Row LSE, f32, natural log, at the lse_* strides below (by default `[batch, num_heads,
   * q_len]`; varlen: `[num_heads, total_q]`); NULL: not written (the forward and combine
   * kernels skip the store). */
  float* lse;

  /** q: elements between sequences. */
  int64_t q_batch_stride;
  /* Strides, in elements, of each tensor's tokens and heads (a head's head_dim elements are
   * contiguous): q, k, v and out may be views into larger buffers, such as the three parts
   * of a fused QKV projection or a padded activation tensor (src/attention/layout.rs
   * validates them: multiples of 8, no overlap, inside the buffer; k and v row strides below
   * 2^31). They enter only each tile's base addresses. */
  /** q: elements between tokens. */
  int64_t q_row_stride;
  /** q: elements between heads. */
  int64_t q_head_stride;
  /** k: elements between sequences. */
  int64_t k_batch_stride;
  /** k: elements between tokens. */
  int64_t k_row_stride;
  /** k: elements between kv heads. */
  int64_t k_head_stride;
  /** v: elements between sequences. */
  int64_t v_batch_stride;
  /** v: elements between tokens. */
  int64_t v_row_stride;
  /** v: elements between kv heads. */
  int64_t v_head_stride;
  /** out: elements between sequences. */
  int64_t o_batch_stride;
  /** out: elements between tokens. */
  int64_t o_row_stride;
  /** out: elements between heads. */
  int64_t o_head_stride;
  /* LSE strides, in f32 elements: lse element (b, h, i) lives at b * lse_batch_stride +
   * h * lse_head_stride + row * lse_row_stride, with row = i (uniform) or `cu_seqlens_q[b] + i`
   * (varlen; lse_batch_stride is then unused). The default is head-major (lse_row_stride 1);
   * an engine's own layout, such as token-major `[total_q, num_heads]` or a slice of a larger
   * buffer, is validated by src/attention/layout.rs (LseStrides: no overlap, inside the
   * buffer). Only the final LSE takes them: the split-KV partials keep their internal layout. */
  /** lse: elements between sequences (uniform batches). */
  int64_t lse_batch_stride;
  /** lse: elements between heads. */
  int64_t lse_head_stride;
  /** lse: elements between query rows (tokens). */
  int64_t lse_row_stride;

  /** NULL for uniform batches; else int32 `[batch + 1]` prefix sums of the query lengths. */
  const int32_t* cu_seqlens_q;
  /** Likewise for the key lengths. */
  const int32_t* cu_seqlens_k;

  /** Sequences. */
  int32_t batch;
  /** Query heads. */
  int32_t num_heads;
  /** Key/value heads; num_heads % num_kv_heads == 0. */
  int32_t num_kv_heads;
  /** Must equal the instantiation's head dimension. */
  int32_t head_dim;
  /** Uniform query length, or the maximum over the batch with varlen. */
  int32_t q_len;
  /** Uniform key length, or the maximum over the batch with varlen. */
  int32_t kv_len;

  /** Score scale: s = scale * q.k. */
  float scale;
  /** > 0: s = softcap * tanh(s / softcap) before masking; 0: off. */
  float softcap;
  /** Learnable sink logits (gpt-oss), f32 `[num_heads]`, natural-log units; NULL: none. Row
   * i of head h normalises by `exp(sink_logits[h]) + sum_j exp(s_ij)` (a key with value 0),
   * so an empty row has out 0 and lse `sink_logits[h]`. With split-KV only the combine
   * kernel adds the term (the partials exclude it). */
  const float* sink_logits;
  /** ALiBi slopes, f32 `[num_heads]`; NULL: none. `s_ij -= alibi_slopes[h] * |p - j|` after
   * the softcap and before masking (FlashAttention-2's order), p = i + kv_len - q_len the
   * query's bottom-right aligned position. */
  const float* alibi_slopes;

  /* Block-sparse metadata compiled on the host by src/pattern (dense and causal included).
   * Heads sharing a pattern share a row set; (sequence b, set of head h) is program
   * id = seq_program_base[b] + head_set[h], which owns CSR rows set_row_ptr[id] ..
   * set_row_ptr[id + 1] (one per query tile; blockIdx.x beyond them exits). Row r's query
   * rows and keys are named by tile_views[r] (see SaTileView); its full kv tiles (no mask
   * work) are full_tiles[full_row_ptr[r] .. full_row_ptr[r + 1]], its partial tiles
   * (token-exact mask) likewise; ascending, no sentinels. Row r's lists end at
   * full_row_end[r] and partial_row_end[r]: for compiled CSR lists these point one element
   * into full_row_ptr / partial_row_ptr (end = the next row's start); lists written on the
   * device per call (adaptive selection, src/adaptive) give each row a fixed capacity from
   * its row_ptr and write the ends. The mask program of the row is mask_programs[id]. */
  /** `[num_heads]`: the row set of each query head. */
  const int32_t* head_set;
  /** `[programs + 1]`: the CSR rows of each (sequence, set) program. */
  const int32_t* set_row_ptr;
  /** `[batch]`: the first program of each sequence. */
  const int32_t* seq_program_base;
  /** `[rows + 1]`: CSR offsets into full_tiles. */
  const int32_t* full_row_ptr;
  /** Full kv tiles (no mask work) of every row, ascending per row. */
  const int32_t* full_tiles;
  /** `[rows + 1]`: CSR offsets into partial_tiles. */
  const int32_t* partial_row_ptr;
  /** `[rows]`: where each row's full tiles end (see above). */
  const int32_t* full_row_end;
  /** `[rows]`: where each row's partial tiles end (see above). */
  const int32_t* partial_row_end;
  /** Partial kv tiles (token-exact mask) of every row, ascending per row. */
  const int32_t* partial_tiles;
  /** `[programs]`: the mask program of each (sequence, set). */
  const SaMaskProgram* mask_programs;
  /** The components the programs name. */
  const SaMaskComponent* mask_components;
  /** Tables of the components (global tokens, block-mask bits, BigBird's random blocks). */
  const int32_t* mask_data;
  /** `[rows]`: the query rows and keys of each row's tiles. */
  const SaTileView* tile_views;
  /** Row lists and gathered keys of the views. */
  const int32_t* view_data;

  /** K/V read from a paged cache instead of k, v when paged.block_table != NULL (the kv
   * lengths then come from kv_len / cu_seqlens_k as usual). */
  SaPagedKv paged;

  /* Split-KV (decode and other launches with few query tiles): num_splits > 1 splits each
   * query tile's kv walk into num_splits contiguous parts run by separate blocks
   * (blockIdx.x = m_block * num_splits + split). Each writes its normalised partial output and
   * LSE (f32) to o_partial [num_splits, total_q, num_heads, head_dim] and lse_partial
   * [num_splits, total_q, num_heads] (total_q rows as in out), and the combine kernel merges
   * them through their LSE into out and lse. */
  /** Splits of each query tile's kv walk (<= 1: none). */
  int32_t num_splits;
  /* GQA packing (decode): > 1 packs the gqa_pack query heads of one kv head into the rows of
   * one block (blockIdx.y is then the kv head; row r is token r / gqa_pack of head
   * kv_head * gqa_pack + r % gqa_pack), so each K/V tile is loaded once for the whole group.
   * The metadata is then compiled with SA_FWD_BLOCK_M_DECODE / gqa_pack tokens per query
   * tile (packed plans use decode blocks). */
  /** Query heads packed per block (<= 1: none). */
  int32_t gqa_pack;
  /* The tile walk (kernels/include/sparse_attn/tile_walk.cuh). SA_WALK_LISTS: the compiled
   * CSR lists and views above, for the lengths the plan was compiled for. SA_WALK_RUNTIME:
   * each block derives its walk from its sequence's lengths (cu_seqlens_q / cu_seqlens_k, read
   * at run time) and its row set's mask program; queries and keys are natural (no views),
   * query tile m of sequence b is tokens m * (SA_FWD_BLOCK_M_* / gqa_pack) onwards, the grid
   * covers q_len (the plan's maximum query length), and a sequence longer than q_len or kv_len
   * (the plan's maxima) is not read at all: its rows are left unwritten. */
  /** A SaWalk: where the tile walk comes from. */
  int32_t walk;
  /** Keeps the struct's layout 8-byte aligned; always 0. */
  int32_t _reserved_walk;
  /** Split-KV partial outputs, f32 `[num_splits, total_q, num_heads, head_dim]`. */
  float* o_partial;
  /** Split-KV partial LSEs, f32 `[num_splits, total_q, num_heads]`. */
  float* lse_partial;

  /** Work accounting (nullable): each block adds the number of kv tiles it processed. */
  unsigned long long* tiles_visited;
} SaAttnFwdParams;

/** The element type of a kernel that takes it at run time (SaKvAppendParams::dtype). */
typedef enum SaDType {
  /** IEEE half. */
  SA_DTYPE_F16 = 0,
  /** bfloat16. */
  SA_DTYPE_BF16 = 1
} SaDType;

/** Launch constants of the block-summary and scoring kernels (issue 15). */
typedef enum SaSummaryConsts {
  /** Threads per summarize block (one per channel, looping over head_dim). */
  SA_SUMMARIZE_THREADS = 128,
  /** Threads per scoring block: one kv block of the tile per thread. */
  SA_SCORE_THREADS = 128,
  /** Channels of the query tile staged in shared memory per step. */
  SA_SCORE_CHANNELS = 16,
  /** Query rows per prefill scoring step (mean_k, minmax); decode and pooled_qk use 1. */
  SA_SCORE_ROWS_PREFILL = 16,
  /** Dynamic shared memory of a scoring block: the f32 query tile
   * [SA_SCORE_CHANNELS][SA_SCORE_ROWS_PREFILL] and the pooled mean query (head_dim <= 512). */
  SA_SCORE_SMEM_BYTES = 4 * (SA_SCORE_CHANNELS * SA_SCORE_ROWS_PREFILL + 512)
} SaSummaryConsts;

/** Block summaries of the keys (content-adaptive scores, issue 15; src/kv_cache/summary.rs is
 * the owner and the Rust twin). A summary block is `block` consecutive key positions,
 * block = min(B, page_size) for the adaptive block B (a power of two), so it never straddles a
 * page and a logical kv block J of B keys is the B / block summary blocks from position J * B,
 * found through the block table exactly like its pages (paging stays the only indirection).
 * For every (page, kv head, summary block s of the page) three f32 vectors of head_dim sit at
 * data[page * page_stride + head * head_stride + s * 3 * head_dim]: the SUM of the present
 * keys (an f32 fold in ascending position order from 0, so the append and the summarize
 * kernels give the same bits), their channel MIN and their channel MAX. The number of present
 * keys comes from the kv length. An empty block is sum 0, min +inf, max -inf; the append
 * kernel resets a block when the first row of it (row % block == 0) lands, so a reused page
 * (ring wrap, freed and reallocated) never mixes old keys in.
 * Identity paging (contiguous K, SaPagedKv::block_table == NULL): summary block s of
 * sequence b is "page" b * seq_blocks + s with blocks_per_page = 1. */
typedef struct SaKvSummaries {
  /** f32 `[pages, num_kv_heads, blocks_per_page, 3, head_dim]`; NULL: no summaries. */
  float* data;
  /** Elements per page: num_kv_heads * blocks_per_page * 3 * head_dim. */
  int64_t page_stride;
  /** Elements per kv head within a page: blocks_per_page * 3 * head_dim. */
  int64_t head_stride;
  /** Key positions per summary block: a power of two dividing page_size (paged). */
  int32_t block;
  /** log2(block). */
  int32_t log2_block;
  /** Summary blocks per page: page_size / block (paged), 1 (identity). */
  int32_t blocks_per_page;
  /** Identity paging: summary blocks per sequence (>= ceil(kv_len / block)); paged: 0. */
  int32_t seq_blocks;
} SaKvSummaries;

/** Appending new tokens' K and V rows to a paged cache (the slots come from the cache's
 * bookkeeping in src/kv_cache: one (physical page, row in page) pair per new token). Copies
 * bits, so one kernel serves f16 and bf16. Grid: (n_tokens, num_kv_heads); block: 32.
 * With summaries (summaries.data != NULL) each block-run of tokens updates its summary block:
 * token t leads a run when it starts a summary block (row % block == 0) or does not continue
 * token t - 1's row in the same page; the leader alone folds the run's keys (read from k_new,
 * in token order) into the summary, resetting it first when the run starts the block. One
 * writer per summary block makes the result exact and independent of the schedule, as long
 * as a summary block's tokens of one launch are consecutive in `slots` (the host checks). */
typedef struct SaKvAppendParams {
  /** New keys `[n_tokens, num_kv_heads, head_dim]`. */
  const void* k_new;
  /** New values, laid out like k_new. */
  const void* v_new;
  /** K pages `[num_pages, num_kv_heads, page_size, head_dim]`. */
  void* k_pages;
  /** V pages, laid out like k_pages. */
  void* v_pages;
  /** int32 `[n_tokens][2]`: the physical page and the row within it of each new token. */
  const int32_t* slots;
  /** Elements per page: num_kv_heads * page_size * head_dim. */
  int64_t page_stride;
  /** Elements per kv head within a page: page_size * head_dim. */
  int64_t page_head_stride;
  /** Tokens to append. */
  int32_t n_tokens;
  /** Key/value heads. */
  int32_t num_kv_heads;
  /** Elements per row; a multiple of 8. */
  int32_t head_dim;
  /** Pages in k_pages / v_pages (slots are checked against it). */
  int32_t num_pages;
  /** Tokens per page. */
  int32_t page_size;
  /** A SaDType: how the summaries read k_new (the copy itself is bitwise). */
  int32_t dtype;
  /** The pool's summaries (page-indexed like k_pages); data NULL: none kept. */
  SaKvSummaries summaries;
} SaKvAppendParams;

/** Summaries of a prefill's keys in one pass (see SaKvSummaries): every (sequence, kv head,
 * summary block) is one block of SA_SUMMARIZE_THREADS threads, each folding its channels over
 * the block's keys in ascending order. Grid: (ceil(kv_len / block), num_kv_heads, batch).
 * Contiguous K (paged.block_table == NULL): k is `[batch, kv_len, num_kv_heads, head_dim]`
 * with the strides below (varlen: packed, cu_seqlens_k), every summary block s < seq_blocks
 * of every sequence is written (empty ones as empty). Paged: the keys are read from
 * paged.k_pages through the block table and the summaries written page-indexed; blocks
 * holding no present or resident key are left alone. */
typedef struct SaKvSummarizeParams {
  /** Keys (contiguous), f16 or bf16 (the instantiation's type). */
  const void* k;
  /** k: elements between sequences. */
  int64_t k_batch_stride;
  /** k: elements between tokens. */
  int64_t k_row_stride;
  /** k: elements between kv heads. */
  int64_t k_head_stride;
  /** NULL for uniform batches; else int32 `[batch + 1]` prefix sums of the key lengths. */
  const int32_t* cu_seqlens_k;
  /** Paged keys (block_table != NULL) or contiguous ones. */
  SaPagedKv paged;
  /** Where the summaries go. */
  SaKvSummaries summaries;
  /** Sequences. */
  int32_t batch;
  /** Key/value heads. */
  int32_t num_kv_heads;
  /** Elements per key row. */
  int32_t head_dim;
  /** Uniform key length, or the maximum over the batch with varlen. */
  int32_t kv_len;
} SaKvSummarizeParams;

/** The block score of a SaAdaptiveScoreParams (docs/adaptive.md, "Scores"). */
typedef enum SaScoreKind {
  /** ln sum over the group's rows i with J * B <= p_i of exp(scale q_i . kbar_J + o_J). */
  SA_SCORE_MEAN_K = 0,
  /** scale qbar_G . kbar_J + o_J. */
  SA_SCORE_POOLED_QK = 1,
  /** max over the group's rows of scale sum_c max(q_ic m_Jc, q_ic M_Jc). */
  SA_SCORE_MINMAX = 2
} SaScoreKind;

/** How query rows form groups (the reference's Grouping). */
typedef enum SaGrouping {
  /** Rows with equal floor(p / q_block) form a group. */
  SA_GROUPING_PREFILL = 0,
  /** Every row is a group. */
  SA_GROUPING_DECODE = 1
} SaGrouping;

/** Block scores from the summaries (docs/adaptive.md "Scores", /work layout "SCORES"): for
 * every sequence b, query head h and group g < max_groups, every J < max_blocks of
 * scores[b * score_batch_stride + h * score_head_stride + g * score_group_stride + J] is
 * written: the score when J is a candidate of g (J * B <= max p of g, J * B < kv_len_b),
 * else -inf (so groups >= groups_b are all -inf). kbar_J = SUM_J / n_J and
 * o_J = ln(n_J / B), n_J the present (resident) keys of block J; a block with none scores
 * -inf. Query rows are at p_i = i + kv_len_b - q_len_b. CUDA cores, f32, precise expf/logf;
 * each thread owns one kv block of a SA_SCORE_THREADS-block tile and keeps its summary chunk
 * in registers, the group's queries are staged in shared memory SA_SCORE_CHANNELS channels
 * at a time. Grid: (max_groups, num_heads, batch). */
typedef struct SaAdaptiveScoreParams {
  /** Queries (f16 or bf16, the instantiation's type), strided as in SaAttnFwdParams. */
  const void* q;
  /** Output, f32 (layout above). */
  float* scores;
  /** q: elements between sequences (uniform). */
  int64_t q_batch_stride;
  /** q: elements between tokens. */
  int64_t q_row_stride;
  /** q: elements between heads. */
  int64_t q_head_stride;
  /** scores: elements between sequences. */
  int64_t score_batch_stride;
  /** scores: elements between query heads. */
  int64_t score_head_stride;
  /** scores: elements between groups. */
  int64_t score_group_stride;
  /** NULL for uniform batches; else int32 `[batch + 1]` prefix sums of the query lengths. */
  const int32_t* cu_seqlens_q;
  /** Likewise for the key lengths. */
  const int32_t* cu_seqlens_k;
  /** The cache's geometry and block table (block_table NULL: identity summaries; the K/V
   * pointers are not read). */
  SaPagedKv paged;
  /** The summaries (data non-NULL). */
  SaKvSummaries summaries;
  /** Sequences. */
  int32_t batch;
  /** Query heads (num_heads % num_kv_heads == 0). */
  int32_t num_heads;
  /** Key/value heads. */
  int32_t num_kv_heads;
  /** Elements per row: a multiple of SA_SCORE_CHANNELS. */
  int32_t head_dim;
  /** Uniform query length, or the maximum over the batch with varlen. */
  int32_t q_len;
  /** Uniform key length, or the maximum over the batch with varlen. */
  int32_t kv_len;
  /** A SaScoreKind. */
  int32_t score;
  /** A SaGrouping. */
  int32_t grouping;
  /** The adaptive block B: a power of two, a multiple of summaries.block. */
  int32_t block;
  /** log2(B). */
  int32_t log2_block;
  /** Rows per prefill group (>= 1). */
  int32_t q_block;
  /** Groups per (sequence, head) in the scores buffer (the grid's x extent). */
  int32_t max_groups;
  /** Blocks per group in the scores buffer (score_group_stride >= max_blocks). */
  int32_t max_blocks;
  /** Score scale: logits are scale * q . k. */
  float scale;
} SaAdaptiveScoreParams;

/* Adaptive block selection (docs/adaptive.md "Choice"; kernels/adaptive_select.cu): block
 * scores -> the selected blocks S(u, g) = F u choose(C \ F) of every (sequence b, unit u,
 * group g), written as bits. One block of SA_SELECT_THREADS threads per (g, u, b): grid
 * (max_groups, units, batch). Units are the query heads (share head) or the kv heads (share
 * kv_group). Groups, candidates C and forced blocks F follow the reference
 * (src/adaptive/select.rs: group_of, BlockSelect::candidates / forced). */
/** The launch constants of the selection kernel. */
typedef enum SaSelectConsts {
  /** Threads per selection block (4 warps). */
  SA_SELECT_THREADS = 128,
  /** Bytes of reduction scratch at the start of its dynamic shared memory (two phases of
   * four warps' pairs of 64-bit partial sums). */
  SA_SELECT_SCRATCH_BYTES = 128
} SaSelectConsts;

/** The choice rule of a selection (SaAdaptSelectParams::choice). */
typedef enum SaSelectChoice {
  /** The first k blocks of C \ F in the order. */
  SA_SELECT_TOP_K = 0,
  /** Blocks appended in order until the softmax mass over C (F's included) reaches p. */
  SA_SELECT_TOP_P = 1,
  /** Blocks of C \ F scoring at least ln(alpha) + max_C s. */
  SA_SELECT_TOP_REL = 2
} SaSelectChoice;

/** How query rows form groups (SaAdaptSelectParams::grouping). */
typedef enum SaSelectGrouping {
  /** Rows with equal floor(p / q_block) (a prefill call). */
  SA_SELECT_PREFILL = 0,
  /** Every row alone (a decode step). */
  SA_SELECT_DECODE = 1
} SaSelectGrouping;

/** Which query heads share a selection (SaAdaptSelectParams::share). */
typedef enum SaSelectShare {
  /** One selection per query head: units = num_heads. */
  SA_SELECT_SHARE_HEAD = 0,
  /** One selection per kv head: units = num_kv_heads. */
  SA_SELECT_SHARE_KV_GROUP = 1
} SaSelectShare;

/** How a unit's score of a block is read (SaAdaptSelectParams::combine). */
typedef enum SaSelectCombine {
  /** Score head = unit (share head, or kv_group with scores per kv head). */
  SA_SELECT_COMBINE_NONE = 0,
  /** kv_group over per-query-head scores, mass-like: ln sum exp over the kv head's query
   * heads (f32, after subtracting their maximum). */
  SA_SELECT_COMBINE_LSE = 1,
  /** kv_group over per-query-head scores, minmax: the maximum over the kv head's query
   * heads (NaN ignored, as f64::max does). */
  SA_SELECT_COMBINE_MAX = 2
} SaSelectCombine;

/** Block selection from scores. Reads `scores[b * score_batch_stride + hs * score_head_stride
 * + g * score_group_stride + J]` (f32, element strides, J contiguous) for the candidates J of
 * the groups g < groups_b of each sequence, nothing else; writes every word of `bits` and
 * every entry of `counts`. */
typedef struct SaAdaptSelectParams {
  /** Block scores, f32; hs runs over `score_heads` heads (see combine). */
  const float* scores;
  /** Selection bits, int32 `[batch, units, max_groups, words]`, words = ceil(max_blocks / 32):
   * bit J % 32 of word J / 32 is set iff J is in S(u, g). Every word is written (zeros for
   * groups >= groups_b and blocks outside C). */
  int32_t* bits;
  /** Optional int32 `[batch, units, max_groups]`: |S(u, g)| (0 for groups >= groups_b; -1 for
   * every group of a sequence over the capacity, see max_groups); NULL: not written. */
  int32_t* counts;
  /** NULL for uniform lengths (q_len, kv_len); else int32 `[batch + 1]` prefix sums of the
   * query lengths, read at run time. */
  const int32_t* cu_seqlens_q;
  /** Likewise for the key lengths (NULL exactly when cu_seqlens_q is NULL). */
  const int32_t* cu_seqlens_k;
  /** scores: elements between sequences. */
  int64_t score_batch_stride;
  /** scores: elements between score heads. */
  int64_t score_head_stride;
  /** scores: elements between groups. */
  int64_t score_group_stride;
  /** top_p: the mass to reach, in (0, 1]. */
  double p;
  /** top_rel: ln(alpha) as the f64 reference computes it (alpha in (0, 1]). */
  double ln_alpha;
  /** Sequences (gridDim.z). */
  int32_t batch;
  /** Query heads. */
  int32_t num_heads;
  /** Key/value heads; num_heads % num_kv_heads == 0. */
  int32_t num_kv_heads;
  /** Heads of the scores tensor: num_heads, or num_kv_heads (share kv_group only). */
  int32_t score_heads;
  /** Uniform query length (unused with cu_seqlens_q). */
  int32_t q_len;
  /** Uniform key length (unused with cu_seqlens_k). */
  int32_t kv_len;
  /** Groups per (b, unit) in bits and counts (gridDim.x). A sequence with more groups, or
   * more than max_blocks key blocks, is over the capacity: nothing is read for it, its bits
   * are 0 and its counts -1. */
  int32_t max_groups;
  /** Key blocks a group may have (the plan's ceil(max kv_len / block)); sizes the shared
   * memory: SA_SELECT_SCRATCH_BYTES + 8 * max_blocks bytes (keys and a work list), 12 *
   * max_blocks for top_p (and masses). */
  int32_t max_blocks;
  /** Key block size B, a power of two. */
  int32_t block;
  /** Query rows per prefill group (positions with equal floor(p / q_block)). */
  int32_t q_block;
  /** A SaSelectGrouping. */
  int32_t grouping;
  /** A SaSelectShare. */
  int32_t share;
  /** A SaSelectCombine. */
  int32_t combine;
  /** A SaSelectChoice. */
  int32_t choice;
  /** top_k: blocks chosen beyond F. */
  int32_t k;
  /** top_p / top_rel: lower clamp of the content-chosen count. */
  int32_t min_k;
  /** top_p / top_rel: upper clamp of the content-chosen count. */
  int32_t max_k;
  /** Forced: the first keep_sinks blocks. */
  int32_t keep_sinks;
  /** Forced: the keep_local blocks ending at the group's last block (inclusive). */
  int32_t keep_local;
  /** Keeps the struct's size a multiple of 8; always 0. */
  int32_t _reserved;
} SaAdaptSelectParams;

/** Compaction of an adaptive selection into the forward kernel's tile lists (src/adaptive,
 * kernels/adaptive_lists.cu), run per call after the selection and before the forward kernel,
 * so the forward plan stays one plan for every call (graph-safe). The selection bits are the
 * mask data of the forward launch: per (sequence b, unit u = a query head, or a kv head when
 * the heads of a kv group share one selection), `max_groups` rows of `words` int32 words, bit
 * J % 32 of word J / 32 of row g set when key block J (keys J * block ..) is selected for the
 * call's query group g, counted from the group of its first row (docs/adaptive.md). Program
 * id = b * units + u owns the CSR rows id * q_tiles .. + q_tiles - 1, row id * q_tiles + m
 * being query tile m (query tokens m * block_m ..). This kernel writes, per call: each row's
 * lists (from row * cap in full_tiles and partial_tiles, which the forward params' row_ptr
 * arrays hold) and their ends, each row's tile view (natural rows and keys of the call's
 * lengths), and each program's mask component: a block mask (block_q = q_block, block_k =
 * block) over the unit's bits, whose data offset is moved back by the call's first group so
 * that absolute query blocks floor(p / q_block) index the call's rows. Grid: (q_tiles, units,
 * batch); block: 32 threads (one warp per row). */
typedef struct SaAdaptListsParams {
  /** The selection bits (see above). */
  const int32_t* bits;
  /** int32 `[batch + 1]` prefix sums of the call's query lengths. */
  const int32_t* cu_seqlens_q;
  /** Likewise for the key lengths. */
  const int32_t* cu_seqlens_k;
  /** Per row, from row * cap: the full kv tiles, ascending. */
  int32_t* full_tiles;
  /** Per row, from row * cap: the partial kv tiles, ascending. */
  int32_t* partial_tiles;
  /** `[rows]`: row * cap + the number of full tiles. */
  int32_t* full_row_end;
  /** `[rows]`: row * cap + the number of partial tiles. */
  int32_t* partial_row_end;
  /** `[rows]`: each row's query rows and keys. */
  SaTileView* tile_views;
  /** `[batch * units * (num_static + 1)]`: each program's mask components, `num_static + 1`
   * from id * (num_static + 1): the layer's static components (read here) and, last, a block
   * mask over the unit's bits (written here). */
  SaMaskComponent* components;
  /** Sequences. */
  int32_t batch;
  /** Selection units per sequence. */
  int32_t units;
  /** CSR rows per program: query tiles of the plan's longest query. */
  int32_t q_tiles;
  /** Query tokens per query tile (the forward kernel's block rows). */
  int32_t block_m;
  /** List capacity of a row: kv tiles of the plan's longest key sequence. */
  int32_t cap;
  /** Rows of a unit's selection (the most groups of a call). */
  int32_t max_groups;
  /** Key blocks of the plan's longest key sequence: ceil(max_kv / block). */
  int32_t max_blocks;
  /** Words per selection row: ceil(max_blocks / 32). */
  int32_t words;
  /** Key block B of the selection (a power of two, 16 .. 4096). */
  int32_t block;
  /** Query positions per group: q_block in a prefill, 1 in a decode step (every row its own
   * group). */
  int32_t q_block;
  /** 1: keys after the query position are excluded. */
  int32_t causal;
  /** The plan's longest query: a longer sequence gets empty rows (not read). */
  int32_t max_q;
  /** The plan's longest key sequence: likewise. */
  int32_t max_kv;
  /** Static components joined to the selection (0, 1 or 2, each dense, a window, sinks or
   * a chunk: the interval forms, whose tiles are derived here from the lengths as the
   * run-time walk derives them). A tile is listed when the selection or a static component
   * allows a pair of it, full when either allows every pair. */
  int32_t num_static;
  /** Keeps the struct a multiple of 8 bytes; always 0. */
  int32_t _reserved;
} SaAdaptListsParams;

#ifdef __cplusplus
}
#endif

#endif /* SPARSE_ATTN_PARAMS_H */

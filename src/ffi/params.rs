// Placeholder until scripts/gen-bindings.sh regenerates it with bindgen.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct SaAttnFwdParams {
    pub q: *const ::std::os::raw::c_void,
    pub k: *const ::std::os::raw::c_void,
    pub v: *const ::std::os::raw::c_void,
    pub out: *mut ::std::os::raw::c_void,
    pub lse: *mut f32,
    pub q_batch_stride: i64,
    pub q_row_stride: i64,
    pub q_head_stride: i64,
    pub k_batch_stride: i64,
    pub k_row_stride: i64,
    pub k_head_stride: i64,
    pub v_batch_stride: i64,
    pub v_row_stride: i64,
    pub v_head_stride: i64,
    pub o_batch_stride: i64,
    pub o_row_stride: i64,
    pub o_head_stride: i64,
    pub lse_batch_stride: i64,
    pub lse_head_stride: i64,
    pub cu_seqlens_q: *const i32,
    pub cu_seqlens_k: *const i32,
    pub batch: i32,
    pub num_heads: i32,
    pub num_kv_heads: i32,
    pub head_dim: i32,
    pub q_len: i32,
    pub kv_len: i32,
    pub scale: f32,
    pub softcap: f32,
    pub causal: i32,
    pub _pad0: i32,
    pub tiles_visited: *mut ::std::os::raw::c_ulonglong,
}
pub const SA_FWD_BLOCK_M: u32 = 64;
pub const SA_FWD_BLOCK_N: u32 = 64;
pub const SA_FWD_THREADS: u32 = 128;

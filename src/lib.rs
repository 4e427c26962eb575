//! sparse-attn

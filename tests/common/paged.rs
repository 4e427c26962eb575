//! Paged-cache fixtures shared by the emulator and GPU tests.

use super::Rng;
use sparse_attn::attention::PagedLayout;
use sparse_attn::{Element, SeqLens};

/// Pages of a pool filled from contiguous varlen K/V (`[total_k, num_kv_heads, head_dim]`): each sequence's
/// logical pages go to distinct random physical pages; with a ring, only the pages still
/// resident are written (through their ring slot) and every other page is NaN, so reading
/// an evicted or unused page would poison the output.
pub struct Pool<T> {
    pub k: Vec<T>,
    pub v: Vec<T>,
    pub table: Vec<i32>,
    pub layout: PagedLayout,
}

#[allow(clippy::too_many_arguments)]
pub fn build_pool<T: Element>(
    rng: &mut Rng,
    seqs: &SeqLens,
    num_kv_heads: usize,
    head_dim: usize,
    k: &[T],
    v: &[T],
    page: usize,
    sink_pages: usize,
    ring_pages: usize,
) -> Pool<T> {
    let batch = seqs.batch();
    let slots_of = |kv_len: usize| {
        let logical = kv_len.div_ceil(page);
        if ring_pages == 0 {
            logical
        } else {
            logical.min(sink_pages + ring_pages)
        }
    };
    let stride = (0..batch)
        .map(|b| slots_of(seqs.lens(b).1))
        .max()
        .unwrap_or(0)
        + 1;
    let total: usize = (0..batch).map(|b| slots_of(seqs.lens(b).1)).sum::<usize>() + 3;
    // A random permutation of the physical pages.
    let mut perm: Vec<i32> = (0..total as i32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.next_u64() as usize % (i + 1));
    }
    let nan = T::from_f32(f32::NAN);
    let page_elems = num_kv_heads * page * head_dim;
    let mut pool = Pool {
        k: vec![nan; total * page_elems],
        v: vec![nan; total * page_elems],
        table: vec![-1; batch * stride],
        layout: PagedLayout {
            page_size: page,
            block_table_stride: stride,
            sink_pages,
            ring_pages,
        },
    };
    let mut next = 0;
    for b in 0..batch {
        let (_, kv_len) = seqs.lens(b);
        let (_, k0) = seqs.offsets(b);
        for s in 0..slots_of(kv_len) {
            pool.table[b * stride + s] = perm[next];
            next += 1;
        }
        let logical = kv_len.div_ceil(page);
        for j in 0..kv_len {
            let lp = j / page;
            let slot = if ring_pages == 0 || lp < sink_pages {
                lp
            } else {
                if lp + ring_pages < logical {
                    continue; // evicted: its slot now holds a newer page
                }
                sink_pages + (lp - sink_pages) % ring_pages
            };
            let phys = pool.table[b * stride + slot] as usize;
            for h in 0..num_kv_heads {
                let dst = ((phys * num_kv_heads + h) * page + j % page) * head_dim;
                let src = ((k0 + j) * num_kv_heads + h) * head_dim;
                pool.k[dst..dst + head_dim].copy_from_slice(&k[src..src + head_dim]);
                pool.v[dst..dst + head_dim].copy_from_slice(&v[src..src + head_dim]);
            }
        }
    }
    pool
}

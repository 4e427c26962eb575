//! What a layer must keep of each sequence, derived from its attention pattern: in tokens
//! ([`Retention`], the one answer) and in pages ([`LayerCapacity`], the cache's layout of it).

use super::layout::PageSize;
use crate::error::{Error, Result};
use crate::pattern::{Component, HeadPatterns, Layer, LayerPlan, Pattern};

/// Which past keys a layer must keep so that every later query still finds the keys its
/// pattern allows: the one answer to "what must a layer keep", from which the cache's page
/// layout ([`LayerCapacity`]) and the CLI's `plan` figures are both derived.
///
/// A layer is [`Retention::Chunk`] when every head's pattern is causal and one
/// [`Chunked`](crate::pattern::Chunked) component of the same size, and
/// [`Retention::SinksWindow`] when **every** head's pattern is causal and made of nothing but
/// [`Sinks`](crate::pattern::Sinks), [`SlidingWindow`](crate::pattern::SlidingWindow) and
/// [`Chunked`](crate::pattern::Chunked) components (a window's `right` does not matter:
/// causality already excludes `j > p`; a causal chunk of `C` positions lies within the window
/// `left = C - 1`). A pattern with no components (dense), a non-causal one, or one with any
/// other component keeps everything: dense and dilated patterns recur over all positions,
/// BigBird may draw any earlier block, block masks may name any column in later rows, and a
/// global query attends every earlier key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retention {
    /// Every key is kept.
    All,
    /// Keys `0 .. sinks` are kept for good; of the rest, only keys at most `left` positions
    /// before the newest query (`j >= p - left`).
    SinksWindow {
        /// The largest sink count over the heads.
        sinks: usize,
        /// The largest window `left` over the heads (0 when no head has a window; a chunk of
        /// `C` positions counts as `C - 1`).
        left: usize,
    },
    /// Chunked attention (Llama 4): only the keys of the newest query's chunk,
    /// `j >= floor(p / size) * size`; a query in a later chunk needs none of them.
    Chunk {
        /// Positions per chunk.
        size: usize,
    },
}

impl Retention {
    /// The retention of a layer whose heads use `set`. Errors: an empty per-head list
    /// (`Error::Pattern`).
    pub fn of(set: &HeadPatterns) -> Result<Self> {
        let patterns: &[Pattern] = match set {
            HeadPatterns::All(p) => std::slice::from_ref(p),
            HeadPatterns::PerHead(v) => v,
        };
        if patterns.is_empty() {
            return Err(Error::Pattern("head pattern set has no patterns".into()));
        }
        let (mut sinks, mut left) = (0usize, 0usize);
        let mut chunks: Option<i64> = None;
        let mut only_chunks = true;
        for p in patterns {
            if !p.causal || p.components.is_empty() {
                return Ok(Retention::All);
            }
            for c in &p.components {
                match c {
                    Component::Sinks(s) => sinks = sinks.max(s.count() as usize),
                    Component::SlidingWindow(w) => left = left.max(w.left() as usize),
                    Component::Chunked(ch) => {
                        left = left.max(ch.size() as usize - 1);
                        only_chunks &= chunks.map_or(true, |size| size == ch.size());
                        chunks = Some(ch.size());
                        continue;
                    }
                    _ => return Ok(Retention::All),
                }
                only_chunks = false;
            }
            only_chunks &= p.components.len() == 1;
        }
        Ok(match chunks {
            Some(size) if only_chunks => Retention::Chunk {
                size: size as usize,
            },
            _ => Retention::SinksWindow { sinks, left },
        })
    }

    /// Keys of a sequence of `n` tokens that must be resident for its last query
    /// (`p = n - 1`) and every later one: `n` for [`Retention::All`], the keys of the last
    /// query's chunk (`(n - 1) % size + 1`) for [`Retention::Chunk`], else the sinks plus the
    /// window's `left + 1` most recent keys, counted once where they overlap.
    pub fn kept_tokens(&self, n: usize) -> usize {
        match *self {
            Retention::All => n,
            Retention::Chunk { .. } if n == 0 => 0,
            Retention::Chunk { size } => (n - 1) % size + 1,
            Retention::SinksWindow { sinks, left } => {
                let recent_start = n.saturating_sub(left.saturating_add(1));
                sinks.min(n) + (n - recent_start.max(sinks.min(n)))
            }
        }
    }
}

/// What a layer keeps of each sequence, in pages: the layout of its [`Retention`].
///
/// A windowed layer's block-table row has `sink_pages + ring_pages` slots: logical page `L`
/// lives in slot [`slot_of_logical_page`](super::slot_of_logical_page)`(L, sink_pages,
/// ring_pages)`, so pages older than the ring are overwritten in place and no page is
/// allocated once the ring is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerCapacity {
    /// Every page of the sequence is kept, up to the cache's `max_seq_len`.
    Full,
    /// The first `sink_pages` pages are kept for good; later positions cycle through a ring
    /// of `ring_pages` (>= 1) pages.
    Windowed {
        /// Pages holding the attention sinks (positions `0 .. sink_pages * page_size`).
        sink_pages: usize,
        /// Pages of the ring of most recent positions.
        ring_pages: usize,
    },
    /// The layer keeps no K/V: it is not softmax attention (a Mamba or linear-attention layer
    /// of a hybrid, [`Layer::NonAttention`]). It has no pages and no block table, and appends
    /// place nothing in it.
    NoKv,
}

impl LayerCapacity {
    /// The capacity a layer with head patterns `set` needs when at most `max_chunk` query
    /// tokens are appended and attended in one step (1 for decode): [`LayerCapacity::Full`]
    /// for [`Retention::All`], else a ring.
    ///
    /// With `S` the sinks and `L` the window `left` of the layer's [`Retention`] (`L = 0`
    /// when no head has a window: the chunk being written still needs pages), the ring holds
    /// `ceil((L + max_chunk - 1) / page_size) + 1` pages and the sinks `ceil(S / page_size)`.
    /// Why: a step appends positions `len .. len + c` (`c <= max_chunk`) and its queries read
    /// keys down to `len - L`, so `L + c` consecutive positions must be resident together; `n`
    /// consecutive positions starting anywhere in a page touch at most
    /// `ceil((n - 1) / page_size) + 1` pages (the worst case starts on a page's last slot), and
    /// the ring holds the last `ring_pages` logical pages. Earlier keys are never allowed
    /// (sinks aside, which have their own pages), so nothing the pattern allows is evicted.
    ///
    /// A chunked layer ([`Retention::Chunk`], chunks of `C`) is the window `L = C - 1`, except
    /// when pages divide the chunks (`C % page_size == 0`): a step's oldest key is then its
    /// chunk's first, at the start of a page, and the ring holds
    /// `floor((C + max_chunk - 2) / page_size) + 1` pages: the chunk's `C / page_size` for
    /// decode, plus the pages the chunk under way spills into.
    ///
    /// Errors: `max_chunk == 0` (`Error::Cache`), an empty per-head list (`Error::Pattern`).
    pub fn from_patterns(
        set: &HeadPatterns,
        page_size: PageSize,
        max_chunk: usize,
    ) -> Result<Self> {
        if max_chunk == 0 {
            return Err(Error::Cache("max_chunk must be at least 1".into()));
        }
        let ps = page_size.get();
        Ok(match Retention::of(set)? {
            Retention::All => LayerCapacity::Full,
            Retention::Chunk { size } if size % ps == 0 => LayerCapacity::Windowed {
                sink_pages: 0,
                ring_pages: (size + max_chunk - 2) / ps + 1,
            },
            Retention::Chunk { size } => LayerCapacity::Windowed {
                sink_pages: 0,
                ring_pages: (size - 1 + max_chunk - 1).div_ceil(ps) + 1,
            },
            Retention::SinksWindow { sinks, left } => LayerCapacity::Windowed {
                sink_pages: sinks.div_ceil(ps),
                ring_pages: (left + max_chunk - 1).div_ceil(ps) + 1,
            },
        })
    }

    /// [`LayerCapacity::from_patterns`] for every attention layer of `plan`,
    /// [`LayerCapacity::NoKv`] for the layers that are not softmax attention.
    pub fn from_plan(plan: &LayerPlan, page_size: PageSize, max_chunk: usize) -> Result<Vec<Self>> {
        if max_chunk == 0 {
            return Err(Error::Cache("max_chunk must be at least 1".into()));
        }
        plan.layers
            .iter()
            .map(|layer| match layer {
                Layer::Attention(a) => {
                    LayerCapacity::from_patterns(&a.patterns, page_size, max_chunk)
                }
                Layer::NonAttention(_) => Ok(LayerCapacity::NoKv),
            })
            .collect()
    }

    /// `(sink_pages, ring_pages)` as `SaPagedKv` takes them (`(0, 0)` for [`LayerCapacity::Full`]
    /// and [`LayerCapacity::NoKv`]).
    pub fn sink_ring(&self) -> (usize, usize) {
        match *self {
            LayerCapacity::Full | LayerCapacity::NoKv => (0, 0),
            LayerCapacity::Windowed {
                sink_pages,
                ring_pages,
            } => (sink_pages, ring_pages),
        }
    }

    /// Block-table slots (= pages at most) one sequence needs in this layer when sequences
    /// hold at most `max_pages` logical pages.
    pub fn pages_per_sequence(&self, max_pages: usize) -> usize {
        match *self {
            LayerCapacity::Full => max_pages,
            LayerCapacity::NoKv => 0,
            LayerCapacity::Windowed {
                sink_pages,
                ring_pages,
            } => (sink_pages + ring_pages).min(max_pages),
        }
    }

    /// The same capacity with a ring that can never wrap (`sink_pages + ring_pages >=
    /// max_pages`) written as [`LayerCapacity::Full`]: both map logical page `L` to slot `L`.
    pub(crate) fn normalized(self, max_pages: usize) -> Self {
        match self {
            LayerCapacity::Windowed {
                sink_pages,
                ring_pages,
            } if sink_pages + ring_pages >= max_pages => LayerCapacity::Full,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::resident;
    use super::*;

    fn ps(n: usize) -> PageSize {
        PageSize::new(n).unwrap()
    }

    /// Every key a pattern allows to the queries of a chunk `len .. len + c` is resident at
    /// `kv_len = len + c`, for every chunk start and every chunk size up to `max_chunk`.
    fn ring_keeps_everything(
        pat: &Pattern,
        page: PageSize,
        max_chunk: usize,
        sink: usize,
        ring: usize,
        horizon: usize,
    ) -> bool {
        for len in 0..horizon {
            for c in 1..=max_chunk {
                let kv_len = len + c;
                for p in len..kv_len {
                    for j in 0..kv_len {
                        if pat.allowed(0, p as i64, j as i64, kv_len)
                            && !resident(j, kv_len, page, sink, ring)
                        {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// The ring of a causal pattern's layer without sink pages (panics on anything else).
    fn ring_of(pat: &Pattern, page: usize, max_chunk: usize) -> usize {
        let cap = LayerCapacity::from_patterns(&pat.clone().into(), ps(page), max_chunk).unwrap();
        let LayerCapacity::Windowed {
            sink_pages: 0,
            ring_pages,
        } = cap
        else {
            panic!("{cap:?}")
        };
        ring_pages
    }

    #[test]
    fn ring_bound_is_sufficient_and_tight() {
        for page in [8, 16] {
            for left in 0..(2 * page + 2) {
                for max_chunk in 1..=4 {
                    let pat = Pattern::new(true, vec![Component::window(left as i64, 0).unwrap()]);
                    let ring_pages = ring_of(&pat, page, max_chunk);
                    assert_eq!(ring_pages, (left + max_chunk - 1).div_ceil(page) + 1);
                    let horizon = left + max_chunk + 3 * page;
                    assert!(
                        ring_keeps_everything(&pat, ps(page), max_chunk, 0, ring_pages, horizon),
                        "{page} {left} {max_chunk}"
                    );
                    // One page fewer loses an allowed key at some offset (a ring of 0 would
                    // mean "no ring", so the check starts at 2).
                    if ring_pages >= 2 {
                        assert!(
                            !ring_keeps_everything(
                                &pat,
                                ps(page),
                                max_chunk,
                                0,
                                ring_pages - 1,
                                horizon
                            ),
                            "{page} {left} {max_chunk}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn chunk_rings_are_sufficient_and_tight() {
        for page in [8, 16] {
            for size in 1..(3 * page + 2) {
                for max_chunk in 1..=4 {
                    let pat = Pattern::causal_chunked(size as i64).unwrap();
                    let ring_pages = ring_of(&pat, page, max_chunk);
                    let horizon = 2 * size + max_chunk + 3 * page;
                    assert!(
                        ring_keeps_everything(&pat, ps(page), max_chunk, 0, ring_pages, horizon),
                        "page {page} chunk {size} max_chunk {max_chunk}: ring {ring_pages}"
                    );
                    // Aligned chunks need no spare page: one page fewer loses a key.
                    if size % page == 0 && ring_pages >= 2 {
                        assert!(
                            !ring_keeps_everything(
                                &pat,
                                ps(page),
                                max_chunk,
                                0,
                                ring_pages - 1,
                                horizon
                            ),
                            "page {page} chunk {size} max_chunk {max_chunk}"
                        );
                    }
                }
            }
        }
        // Llama 4's 8192-token chunks in pages of 16: the chunk's 512 pages for decode.
        let llama4: HeadPatterns = Pattern::causal_chunked(8192).unwrap().into();
        assert_eq!(
            LayerCapacity::from_patterns(&llama4, ps(16), 1).unwrap(),
            LayerCapacity::Windowed {
                sink_pages: 0,
                ring_pages: 512
            }
        );
        assert_eq!(
            Retention::of(&llama4).unwrap(),
            Retention::Chunk { size: 8192 }
        );
        assert_eq!(
            Retention::Chunk { size: 8192 }.kept_tokens(10000),
            10000 - 8192
        );
        assert_eq!(Retention::Chunk { size: 8192 }.kept_tokens(8192), 8192);
        assert_eq!(Retention::Chunk { size: 8192 }.kept_tokens(0), 0);
        // Mixed with a window over the heads, a chunk counts as the window C - 1.
        let mixed = HeadPatterns::PerHead(vec![
            Pattern::causal_chunked(100).unwrap(),
            Pattern::causal_window(20).unwrap(),
        ]);
        assert_eq!(
            Retention::of(&mixed).unwrap(),
            Retention::SinksWindow { sinks: 0, left: 99 }
        );
        let two_sizes = HeadPatterns::PerHead(vec![
            Pattern::causal_chunked(100).unwrap(),
            Pattern::causal_chunked(30).unwrap(),
        ]);
        assert_eq!(
            Retention::of(&two_sizes).unwrap(),
            Retention::SinksWindow { sinks: 0, left: 99 }
        );
        // A non-causal chunk keeps everything.
        let open: HeadPatterns = Pattern::new(false, vec![Component::chunked(8).unwrap()]).into();
        assert_eq!(Retention::of(&open).unwrap(), Retention::All);
    }

    #[test]
    fn plans_give_layers_that_are_not_attention_no_kv() {
        let plan = LayerPlan::periodic(
            4,
            Layer::non_attention("linear_attention").unwrap(),
            Pattern::causal_chunked(32).unwrap(),
            2,
            1,
        )
        .unwrap();
        let caps = LayerCapacity::from_plan(&plan, ps(8), 1).unwrap();
        assert_eq!(caps[0], LayerCapacity::NoKv);
        assert_eq!(
            caps[1],
            LayerCapacity::Windowed {
                sink_pages: 0,
                ring_pages: 4
            }
        );
        assert_eq!(LayerCapacity::NoKv.pages_per_sequence(100), 0);
        assert_eq!(LayerCapacity::NoKv.sink_ring(), (0, 0));
        assert!(matches!(
            LayerCapacity::from_plan(&plan, ps(8), 0),
            Err(Error::Cache(_))
        ));
    }

    #[test]
    fn sinks_and_windows_over_heads() {
        let set = HeadPatterns::PerHead(vec![
            Pattern::streaming(4, 256).unwrap(),
            Pattern::streaming(20, 16).unwrap(),
            Pattern::causal_window(100).unwrap(),
        ]);
        let cap = LayerCapacity::from_patterns(&set, ps(16), 1).unwrap();
        assert_eq!(
            cap,
            LayerCapacity::Windowed {
                sink_pages: 2,
                ring_pages: 17
            }
        );
        for h in 0..3 {
            let pat = set.pattern(h).unwrap();
            assert!(ring_keeps_everything(pat, ps(16), 1, 2, 17, 400));
        }
        // Streaming with a bigger chunk, brute force.
        let pat = Pattern::streaming(5, 30).unwrap();
        let cap = LayerCapacity::from_patterns(&pat.clone().into(), ps(8), 3).unwrap();
        assert_eq!(
            cap,
            LayerCapacity::Windowed {
                sink_pages: 1,
                ring_pages: 5
            }
        );
        assert!(ring_keeps_everything(&pat, ps(8), 3, 1, 5, 120));
        // Sinks only: the ring holds the chunk being written.
        let pat = Pattern::new(true, vec![Component::sinks(3).unwrap()]);
        let cap = LayerCapacity::from_patterns(&pat.clone().into(), ps(8), 1).unwrap();
        assert_eq!(
            cap,
            LayerCapacity::Windowed {
                sink_pages: 1,
                ring_pages: 1
            }
        );
        assert!(ring_keeps_everything(&pat, ps(8), 1, 1, 1, 60));
        // A window's right side is irrelevant under causality.
        let pat = Pattern::new(true, vec![Component::window(10, 7).unwrap()]);
        let cap = LayerCapacity::from_patterns(&pat.clone().into(), ps(8), 2).unwrap();
        assert_eq!(
            cap,
            LayerCapacity::Windowed {
                sink_pages: 0,
                ring_pages: 3
            }
        );
        assert!(ring_keeps_everything(&pat, ps(8), 2, 0, 3, 80));
    }

    /// Every key below `n` that a query at `n - 1` or later may attend (over a sequence
    /// that keeps growing) is kept by the retention, and `kept_tokens` counts those keys.
    #[test]
    fn retention_keeps_what_later_queries_attend() {
        let patterns = [
            Pattern::causal(),
            Pattern::causal_window(5).unwrap(),
            Pattern::streaming(3, 4).unwrap(),
            Pattern::new(true, vec![Component::sinks(2).unwrap()]),
            Pattern::new(true, vec![Component::window(2, 3).unwrap()]),
            Pattern::new(
                true,
                vec![
                    Component::window_size(4).unwrap(),
                    Component::global(vec![0, 9]).unwrap(),
                ],
            ),
            Pattern::new(true, vec![Component::dilated(3).unwrap()]),
            Pattern::causal_chunked(4).unwrap(),
            Pattern::causal_chunked(1).unwrap(),
            Pattern::new(
                true,
                vec![Component::chunked(6).unwrap(), Component::sinks(2).unwrap()],
            ),
        ];
        for pat in &patterns {
            let r = Retention::of(&pat.clone().into()).unwrap();
            for n in [1usize, 4, 7, 13, 30] {
                let kept = |j: i64| match r {
                    Retention::All => true,
                    Retention::Chunk { size } => j >= ((n - 1) / size * size) as i64,
                    Retention::SinksWindow { sinks, left } => {
                        (j as usize) < sinks || j >= n as i64 - 1 - left as i64
                    }
                };
                for p in n as i64 - 1..n as i64 + 40 {
                    for j in 0..n as i64 {
                        if pat.allowed(0, p, j, p as usize + 1) {
                            assert!(kept(j), "{pat:?}: key {j} needed by {p}, n {n}, {r:?}");
                        }
                    }
                }
                let count = (0..n as i64).filter(|&j| kept(j)).count();
                assert_eq!(r.kept_tokens(n), count, "{pat:?} n {n}");
            }
        }
        let streaming = Retention::of(&Pattern::streaming(4, 1024).unwrap().into()).unwrap();
        assert_eq!(
            streaming,
            Retention::SinksWindow {
                sinks: 4,
                left: 1023
            }
        );
        assert_eq!(streaming.kept_tokens(32768), 4 + 1024);
        assert_eq!(streaming.kept_tokens(100), 100);
    }

    #[test]
    fn patterns_that_need_old_keys_keep_everything() {
        let window = Component::window_size(16).unwrap();
        let full = [
            Pattern::causal(),
            Pattern::dense(),
            Pattern::new(false, vec![window.clone()]),
            Pattern::new(true, vec![window.clone(), Component::dense()]),
            Pattern::new(
                true,
                vec![window.clone(), Component::global(vec![0, 40]).unwrap()],
            ),
            Pattern::new(true, vec![window.clone(), Component::dilated(4).unwrap()]),
        ];
        for pat in &full {
            let cap = LayerCapacity::from_patterns(&pat.clone().into(), ps(8), 1).unwrap();
            assert_eq!(cap, LayerCapacity::Full, "{pat:?}");
        }
        // One dense head makes the whole layer keep everything.
        let set =
            HeadPatterns::PerHead(vec![Pattern::causal_window(16).unwrap(), Pattern::causal()]);
        assert_eq!(
            LayerCapacity::from_patterns(&set, ps(8), 1).unwrap(),
            LayerCapacity::Full
        );
    }

    #[test]
    fn errors_and_helpers() {
        let pat: HeadPatterns = Pattern::causal_window(16).unwrap().into();
        assert!(matches!(
            LayerCapacity::from_patterns(&pat, ps(8), 0),
            Err(Error::Cache(_))
        ));
        assert!(matches!(
            LayerCapacity::from_patterns(&HeadPatterns::PerHead(vec![]), ps(8), 1),
            Err(Error::Pattern(_))
        ));
        let w = LayerCapacity::Windowed {
            sink_pages: 1,
            ring_pages: 4,
        };
        assert_eq!(w.sink_ring(), (1, 4));
        assert_eq!(w.pages_per_sequence(100), 5);
        assert_eq!(w.pages_per_sequence(3), 3);
        assert_eq!(w.normalized(5), LayerCapacity::Full);
        assert_eq!(w.normalized(6), w);
        assert_eq!(LayerCapacity::Full.sink_ring(), (0, 0));
        assert_eq!(LayerCapacity::Full.pages_per_sequence(7), 7);
    }
}

//! How many pages a layer keeps per sequence, derived from the layer's attention pattern.

use super::layout::PageSize;
use crate::error::{Error, Result};
use crate::pattern::{Component, HeadPatterns, LayerPlan, Pattern};

/// What a layer keeps of each sequence.
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
}

impl LayerCapacity {
    /// The capacity a layer with head patterns `set` needs when at most `max_chunk` query
    /// tokens are appended and attended in one step (1 for decode).
    ///
    /// The layer gets a ring only when **every** head's pattern is causal and made of nothing
    /// but [`Sinks`](crate::pattern::Sinks) and [`SlidingWindow`](crate::pattern::SlidingWindow)
    /// components (a window's `right` does not matter: causality already excludes `j > p`);
    /// a pattern with no components (dense), a non-causal one, or one with any other
    /// component (dense, global tokens, dilated, block masks, BigBird) keeps every page.
    ///
    /// With `S` the largest sink count and `L` the largest window `left` over the heads
    /// (`L = 0` when no head has a window: the chunk being written still needs pages), the
    /// ring holds `ceil((L + max_chunk - 1) / page_size) + 1` pages and the sinks
    /// `ceil(S / page_size)`. Why: a step appends positions `len .. len + c` (`c <= max_chunk`)
    /// and its queries read keys down to `len - L`, so `L + c` consecutive positions must be
    /// resident together; `n` consecutive positions starting anywhere in a page touch at most
    /// `ceil((n - 1) / page_size) + 1` pages (the worst case starts on a page's last slot), and
    /// the ring holds the last `ring_pages` logical pages. Earlier keys are never allowed
    /// (sinks aside, which have their own pages), so nothing the pattern allows is evicted.
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
        let patterns: &[Pattern] = match set {
            HeadPatterns::All(p) => std::slice::from_ref(p),
            HeadPatterns::PerHead(v) => v,
        };
        if patterns.is_empty() {
            return Err(Error::Pattern("head pattern set has no patterns".into()));
        }
        let (mut sinks, mut left) = (0usize, 0usize);
        for p in patterns {
            if !p.causal || p.components.is_empty() {
                return Ok(LayerCapacity::Full);
            }
            for c in &p.components {
                match c {
                    Component::Sinks(s) => sinks = sinks.max(s.count() as usize),
                    Component::SlidingWindow(w) => left = left.max(w.left() as usize),
                    _ => return Ok(LayerCapacity::Full),
                }
            }
        }
        let ps = page_size.get();
        Ok(LayerCapacity::Windowed {
            sink_pages: sinks.div_ceil(ps),
            ring_pages: (left + max_chunk - 1).div_ceil(ps) + 1,
        })
    }

    /// [`LayerCapacity::from_patterns`] for every layer of `plan`.
    pub fn from_plan(plan: &LayerPlan, page_size: PageSize, max_chunk: usize) -> Result<Vec<Self>> {
        plan.layers
            .iter()
            .map(|set| LayerCapacity::from_patterns(set, page_size, max_chunk))
            .collect()
    }

    /// `(sink_pages, ring_pages)` as `SaPagedKv` takes them (`(0, 0)` for [`LayerCapacity::Full`]).
    pub fn sink_ring(&self) -> (usize, usize) {
        match *self {
            LayerCapacity::Full => (0, 0),
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

    #[test]
    fn ring_bound_is_sufficient_and_tight() {
        for page in [8, 16] {
            for left in 0..(2 * page + 2) {
                for max_chunk in 1..=4 {
                    let pat = Pattern::new(true, vec![Component::window(left as i64, 0).unwrap()]);
                    let cap =
                        LayerCapacity::from_patterns(&pat.clone().into(), ps(page), max_chunk)
                            .unwrap();
                    let LayerCapacity::Windowed {
                        sink_pages: 0,
                        ring_pages,
                    } = cap
                    else {
                        panic!("{cap:?}")
                    };
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

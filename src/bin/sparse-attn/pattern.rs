//! Pattern files (PATTERNS.md, "Patterns, heads and layers"): typed mirrors of the JSON.
//!
//! Every component of PATTERNS.md is parsed exactly (unknown fields, wrong types and missing
//! fields are errors naming the place); which of them the kernels run is decided afterwards
//! by [`resolve`]. For now that is `dense` (or no component) with `causal` true or false.

use std::num::NonZeroU64;

use serde::Deserialize;

/// `{"causal": bool, "components": [component, ...]}`. A missing `components` list means
/// dense, like an empty one; `causal` must be given.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    pub causal: bool,
    #[serde(default)]
    pub components: Vec<Component>,
}

/// One component: a predicate `allowed(h, p, j)`; a pattern allows the union.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Component {
    /// `{"dense": {}}`
    Dense {},
    /// `{"sliding_window": {"left": L, "right": R}}` or `{"sliding_window": {"size": W}}`
    SlidingWindow(SlidingWindow),
    /// `{"sinks": {"count": S}}`
    Sinks { count: u64 },
    /// `{"global": {"tokens": [t0, t1, ...]}}`
    Global { tokens: Vec<u64> },
    /// `{"dilated": {"stride": K}}`, K >= 1
    Dilated { stride: NonZeroU64 },
    /// `{"block_mask": {"block_q": BQ, "block_k": BK, "mask": [[0/1, ...], ...]}}`
    BlockMask(BlockMask),
    /// `{"bigbird": {"block": B, "window_blocks": W, "global_blocks": G, "random_blocks": R,
    /// "seed": S}}`
    Bigbird(BigBird),
}

impl Component {
    /// The JSON key of the component.
    pub fn name(&self) -> &'static str {
        match self {
            Component::Dense {} => "dense",
            Component::SlidingWindow(_) => "sliding_window",
            Component::Sinks { .. } => "sinks",
            Component::Global { .. } => "global",
            Component::Dilated { .. } => "dilated",
            Component::BlockMask(_) => "block_mask",
            Component::Bigbird(_) => "bigbird",
        }
    }
}

/// A token-exact window `p - left <= j <= p + right`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SlidingWindowJson")]
pub struct SlidingWindow {
    pub left: u64,
    pub right: u64,
}

/// The two accepted JSON forms, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlidingWindowJson {
    left: Option<u64>,
    right: Option<u64>,
    size: Option<u64>,
}

impl TryFrom<SlidingWindowJson> for SlidingWindow {
    type Error = String;
    fn try_from(w: SlidingWindowJson) -> Result<Self, String> {
        match (w.left, w.right, w.size) {
            (Some(left), Some(right), None) => Ok(SlidingWindow { left, right }),
            // The W most recent tokens including the query's own.
            (None, None, Some(size)) if size >= 1 => Ok(SlidingWindow {
                left: size - 1,
                right: 0,
            }),
            (None, None, Some(_)) => Err("sliding_window size must be at least 1".into()),
            _ => Err(
                "sliding_window takes either {\"left\": L, \"right\": R} or {\"size\": W}".into(),
            ),
        }
    }
}

/// A block-level mask: `mask[p / block_q][j / block_k] == 1`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BlockMaskJson")]
pub struct BlockMask {
    pub block_q: NonZeroU64,
    pub block_k: NonZeroU64,
    /// Rows of query blocks, each with one 0/1 entry per key block.
    pub mask: Vec<Vec<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockMaskJson {
    block_q: NonZeroU64,
    block_k: NonZeroU64,
    mask: Vec<Vec<u8>>,
}

impl TryFrom<BlockMaskJson> for BlockMask {
    type Error = String;
    fn try_from(b: BlockMaskJson) -> Result<Self, String> {
        let mut mask = Vec::with_capacity(b.mask.len());
        for (r, row) in b.mask.iter().enumerate() {
            let mut out = Vec::with_capacity(row.len());
            for (c, &x) in row.iter().enumerate() {
                match x {
                    0 => out.push(false),
                    1 => out.push(true),
                    _ => {
                        return Err(format!(
                            "block_mask mask[{r}][{c}] is {x}; entries are 0 or 1"
                        ))
                    }
                }
            }
            mask.push(out);
        }
        Ok(BlockMask {
            block_q: b.block_q,
            block_k: b.block_k,
            mask,
        })
    }
}

/// BigBird: window, global and seeded random blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigBird {
    pub block: NonZeroU64,
    pub window_blocks: u64,
    pub global_blocks: u64,
    pub random_blocks: u64,
    pub seed: u64,
}

/// `{"heads": [pattern, ...]}`: head `h` uses entry `h`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadPatternSet {
    pub heads: Vec<Pattern>,
}

/// What `--pattern` may hold: one pattern for all heads, or one per head.
#[derive(Clone, Debug, PartialEq)]
pub enum PatternFile {
    All(Pattern),
    PerHead(Vec<Pattern>),
}

/// Parses a pattern file. Errors are one line and carry serde's line and column.
pub fn parse(text: &str) -> Result<PatternFile, String> {
    // Look at the top-level keys first so the error names the form the user meant.
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or("expected a JSON object: a pattern {\"causal\": ..., \"components\": [...]} or {\"heads\": [...]}")?;
    if obj.contains_key("layers") {
        return Err(
            "a layer plan ({\"layers\": [...]}) describes a whole model; `run` takes one layer's \
             pattern or head pattern set"
                .into(),
        );
    }
    if obj.contains_key("heads") {
        let set: HeadPatternSet =
            serde_json::from_str(text).map_err(|e| format!("head pattern set: {e}"))?;
        return Ok(PatternFile::PerHead(set.heads));
    }
    let p: Pattern = serde_json::from_str(text).map_err(|e| format!("pattern: {e}"))?;
    Ok(PatternFile::All(p))
}

/// What the kernels run for a pattern file, once it is known to fit `num_heads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub causal: bool,
}

/// Why a pattern cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// The pattern does not fit the shapes.
    Fit(String),
    /// Valid, but not implemented yet (named component or feature).
    NotYetSupported(String),
}

fn resolve_one(p: &Pattern) -> Result<Resolved, ResolveError> {
    if let Some(c) = p
        .components
        .iter()
        .find(|c| !matches!(c, Component::Dense {}))
    {
        return Err(ResolveError::NotYetSupported(c.name().to_string()));
    }
    Ok(Resolved { causal: p.causal })
}

/// Checks the file against the number of query heads and reduces it to what runs now.
pub fn resolve(file: &PatternFile, num_heads: usize) -> Result<Resolved, ResolveError> {
    match file {
        PatternFile::All(p) => resolve_one(p),
        PatternFile::PerHead(heads) => {
            if heads.len() != num_heads {
                return Err(ResolveError::Fit(format!(
                    "the head pattern set has {} entries but q has {num_heads} heads",
                    heads.len()
                )));
            }
            let mut first: Option<Resolved> = None;
            for (h, p) in heads.iter().enumerate() {
                let r = resolve_one(p)?;
                match first {
                    None => first = Some(r),
                    Some(f) if f != r => {
                        return Err(ResolveError::NotYetSupported(format!(
                        "different patterns per head (head 0 causal = {}, head {h} causal = {})",
                        f.causal, r.causal
                    )))
                    }
                    Some(_) => {}
                }
            }
            Ok(first.unwrap_or(Resolved { causal: false }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Pattern {
        match parse(text).unwrap() {
            PatternFile::All(p) => p,
            other => panic!("expected one pattern, got {other:?}"),
        }
    }

    #[test]
    fn every_component_parses_in_its_exact_form() {
        let p = one(r#"{"causal": true, "components": [
                {"dense": {}},
                {"sliding_window": {"left": 3, "right": 1}},
                {"sliding_window": {"size": 1024}},
                {"sinks": {"count": 4}},
                {"global": {"tokens": [0, 7]}},
                {"dilated": {"stride": 2}},
                {"block_mask": {"block_q": 64, "block_k": 32, "mask": [[1, 0], [0, 1]]}},
                {"bigbird": {"block": 64, "window_blocks": 3, "global_blocks": 1,
                             "random_blocks": 2, "seed": 7}}
            ]}"#);
        assert!(p.causal);
        let names: Vec<_> = p.components.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "dense",
                "sliding_window",
                "sliding_window",
                "sinks",
                "global",
                "dilated",
                "block_mask",
                "bigbird"
            ]
        );
        assert_eq!(
            p.components[2],
            Component::SlidingWindow(SlidingWindow {
                left: 1023,
                right: 0
            })
        );
        let Component::BlockMask(b) = &p.components[6] else {
            unreachable!()
        };
        assert_eq!(b.mask, vec![vec![true, false], vec![false, true]]);
    }

    #[test]
    fn malformed_components_are_rejected() {
        for bad in [
            r#"{"causal": false, "components": [{"dense": {"x": 1}}]}"#,
            r#"{"causal": false, "components": [{"sliding_window": {"size": 4, "left": 1}}]}"#,
            r#"{"causal": false, "components": [{"sliding_window": {"left": 1}}]}"#,
            r#"{"causal": false, "components": [{"sliding_window": {"size": 0}}]}"#,
            r#"{"causal": false, "components": [{"dilated": {"stride": 0}}]}"#,
            r#"{"causal": false, "components": [{"sinks": {"count": -1}}]}"#,
            r#"{"causal": false, "components": [{"block_mask": {"block_q": 1, "block_k": 1, "mask": [[2]]}}]}"#,
            r#"{"causal": false, "components": [{"window": {}}]}"#,
            r#"{"causal": false, "components": [{"dense": {}, "sinks": {"count": 1}}]}"#,
            r#"{"causal": "yes", "components": []}"#,
            r#"{"components": []}"#,
            r#"{"causal": false, "extra": 1}"#,
            r#"{"heads": [{"causal": true}], "causal": true}"#,
            r#"[]"#,
            r#"{"causal": true"#,
        ] {
            assert!(parse(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn resolution_accepts_dense_and_causal_only() {
        let r = |t: &str, h| resolve(&parse(t).unwrap(), h);
        assert_eq!(
            r(r#"{"causal": true, "components": []}"#, 4),
            Ok(Resolved { causal: true })
        );
        assert_eq!(
            r(r#"{"causal": false, "components": [{"dense": {}}]}"#, 4),
            Ok(Resolved { causal: false })
        );
        assert_eq!(
            r(
                r#"{"causal": true, "components": [{"sinks": {"count": 4}}]}"#,
                4
            ),
            Err(ResolveError::NotYetSupported("sinks".into()))
        );
        let heads =
            r#"{"heads": [{"causal": true}, {"causal": true, "components": [{"dense": {}}]}]}"#;
        assert_eq!(r(heads, 2), Ok(Resolved { causal: true }));
        assert!(matches!(r(heads, 3), Err(ResolveError::Fit(_))));
        let mixed = r#"{"heads": [{"causal": true}, {"causal": false}]}"#;
        assert!(matches!(r(mixed, 2), Err(ResolveError::NotYetSupported(_))));
    }
}

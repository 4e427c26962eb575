//! Patterns and head pattern sets (docs/patterns.md, "Patterns, heads and layers"); layer
//! plans are in [`super::layer`].

use serde::{Deserialize, Serialize};

use super::component::{Component, Sinks, SlidingWindow};
use crate::error::{Error, Result};

/// `{"causal": bool, "components": [component, ...]}`:
/// `allowed(h, p, j) = (0 <= j < kv_len) and (union of the components) and (not causal or j <= p)`.
///
/// An empty `components` list means dense. In JSON `causal` is required (a silently
/// non-causal pattern is a classic bug) and `components` defaults to the empty list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    /// Keys after the query position (`j > p`) are excluded.
    pub causal: bool,
    /// The union of these components is allowed; empty means dense.
    #[serde(default)]
    pub components: Vec<Component>,
}

impl Pattern {
    /// A pattern from its parts.
    pub fn new(causal: bool, components: Vec<Component>) -> Self {
        Pattern { causal, components }
    }

    /// Dense, non-causal.
    pub fn dense() -> Self {
        Pattern::new(false, Vec::new())
    }

    /// Dense and causal (the usual decoder pattern).
    pub fn causal() -> Self {
        Pattern::new(true, Vec::new())
    }

    /// Causal sliding window of the `size` most recent tokens including the query's own
    /// position: Mistral's and Hugging Face's `sliding_window`.
    pub fn causal_window(size: i64) -> Result<Self> {
        Ok(Pattern::new(true, vec![Component::window_size(size)?]))
    }

    /// Causal chunked attention (Llama 4): the keys of the query's own chunk of `size`
    /// positions, up to the query.
    pub fn causal_chunked(size: i64) -> Result<Self> {
        Ok(Pattern::new(true, vec![Component::chunked(size)?]))
    }

    /// StreamingLLM: `sinks` leading tokens plus a causal `size` window.
    pub fn streaming(sinks: i64, size: i64) -> Result<Self> {
        Ok(Pattern::new(
            true,
            vec![
                Component::Sinks(Sinks::new(sinks)?),
                Component::SlidingWindow(SlidingWindow::of_size(size)?),
            ],
        ))
    }

    /// Whether the union of the components admits every key (no components, or a dense one).
    pub fn is_dense(&self) -> bool {
        self.components.is_empty()
            || self
                .components
                .iter()
                .any(|c| matches!(c, Component::Dense(_)))
    }

    /// Whether the predicate depends on the head index (BigBird random blocks).
    pub fn is_head_dependent(&self) -> bool {
        !self.is_dense() && self.components.iter().any(Component::is_head_dependent)
    }

    /// The token predicate of the contract for query head `head`, query position `p`
    /// (bottom-right aligned: row `i` has `p = i + kv_len - q_len`, possibly negative) and
    /// key `j`.
    pub fn allowed(&self, head: usize, p: i64, j: i64, kv_len: usize) -> bool {
        if j < 0 || j >= kv_len as i64 || (self.causal && j > p) {
            return false;
        }
        self.components.is_empty()
            || self
                .components
                .iter()
                .any(|c| c.admits(head, p, j, kv_len, self.causal))
    }

    /// Checks the pattern against a sequence of `kv_len` keys (global tokens must be keys).
    pub fn check_shape(&self, kv_len: usize) -> Result<()> {
        self.components
            .iter()
            .try_for_each(|c| c.check_shape(kv_len))
    }

    /// Parses a pattern from JSON.
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(|e| Error::Pattern(e.to_string()))
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("patterns always serialize")
    }
}

/// One pattern for all heads, or `{"heads": [pattern, ...]}` with one entry per query head
/// (head `h` uses entry `h`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadPatterns {
    /// Every head uses this pattern. JSON: the pattern object itself.
    All(Pattern),
    /// Head `h` uses entry `h`; the list must have exactly `num_heads` entries.
    /// JSON: `{"heads": [...]}`.
    PerHead(Vec<Pattern>),
}

#[derive(Serialize)]
#[serde(untagged)]
enum HeadPatternsRef<'a> {
    All(&'a Pattern),
    PerHead { heads: &'a [Pattern] },
}

impl Serialize for HeadPatterns {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            HeadPatterns::All(p) => HeadPatternsRef::All(p),
            HeadPatterns::PerHead(v) => HeadPatternsRef::PerHead { heads: v },
        }
        .serialize(s)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeadPatterns {
    causal: Option<bool>,
    components: Option<Vec<Component>>,
    heads: Option<Vec<Pattern>>,
}

impl<'de> Deserialize<'de> for HeadPatterns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = RawHeadPatterns::deserialize(d)?;
        match (raw.heads, raw.causal, raw.components) {
            (Some(heads), None, None) => {
                if heads.is_empty() {
                    Err(D::Error::custom("\"heads\" is an empty list"))
                } else {
                    Ok(HeadPatterns::PerHead(heads))
                }
            }
            (Some(_), _, _) => Err(D::Error::custom(
                "a head pattern set is either a pattern or {\"heads\": [...]}, not both",
            )),
            (None, Some(causal), components) => Ok(HeadPatterns::All(Pattern {
                causal,
                components: components.unwrap_or_default(),
            })),
            (None, None, _) => Err(D::Error::custom(
                "a pattern needs \"causal\": true or false (or use {\"heads\": [...]})",
            )),
        }
    }
}

impl From<Pattern> for HeadPatterns {
    fn from(p: Pattern) -> Self {
        HeadPatterns::All(p)
    }
}

impl HeadPatterns {
    /// The pattern of query head `head`; `None` when a per-head list has no such entry.
    pub fn pattern(&self, head: usize) -> Option<&Pattern> {
        match self {
            HeadPatterns::All(p) => Some(p),
            HeadPatterns::PerHead(v) => v.get(head),
        }
    }

    /// The token predicate for query head `head` (see [`Pattern::allowed`]); `false` for a
    /// head the set does not describe.
    pub fn allowed(&self, head: usize, p: i64, j: i64, kv_len: usize) -> bool {
        self.pattern(head)
            .is_some_and(|pat| pat.allowed(head, p, j, kv_len))
    }

    /// Checks the set against a problem: a per-head list needs exactly `num_heads` entries,
    /// and every global token must be a key (`< kv_len`).
    pub fn validate(&self, num_heads: usize, kv_len: usize) -> Result<()> {
        match self {
            HeadPatterns::All(p) => p.check_shape(kv_len),
            HeadPatterns::PerHead(v) => {
                if v.len() != num_heads {
                    return Err(Error::Pattern(format!(
                        "head pattern set has {} entries but the problem has {num_heads} query heads",
                        v.len()
                    )));
                }
                v.iter().enumerate().try_for_each(|(h, p)| {
                    p.check_shape(kv_len)
                        .map_err(|e| Error::Pattern(format!("head {h}: {}", strip(e))))
                })
            }
        }
    }

    /// The causality every head shares: `Some(c)` when all heads agree, `None` when they
    /// differ (decode with a paged cache needs causal patterns on every head).
    pub fn causal(&self) -> Option<bool> {
        match self {
            HeadPatterns::All(p) => Some(p.causal),
            HeadPatterns::PerHead(v) => {
                let c = v.first().map(|p| p.causal)?;
                v.iter().all(|p| p.causal == c).then_some(c)
            }
        }
    }

    /// Parses a pattern or a `{"heads": [...]}` set from JSON.
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(|e| Error::Pattern(e.to_string()))
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("patterns always serialize")
    }
}

/// The message inside a pattern error (to re-wrap it with context).
pub(crate) fn strip(e: Error) -> String {
    match e {
        Error::Pattern(m) => m,
        other => other.to_string(),
    }
}

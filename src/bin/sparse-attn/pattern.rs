//! Pattern files for the CLI: reading them with the library's parser (`sparse_attn::pattern`,
//! the one implementation of docs/patterns.md) and the compact one-line text the commands print.

use std::path::Path;

use sparse_attn::pattern::{Component, HeadPatterns, Pattern};
use sparse_attn::Error;

use crate::{input_err, CliError};

/// The message inside a library error, without its "invalid pattern: " prefix (the CLI puts
/// the file name there instead).
pub fn message(e: Error) -> String {
    match e {
        Error::Pattern(m) => m,
        other => other.to_string(),
    }
}

/// Reads a pattern or head pattern set (`run`, `viz`). A layer plan gets its own message, since
/// these commands run one layer.
pub fn read_head_patterns(path: &Path) -> Result<HeadPatterns, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| input_err(path, format!("cannot read ({e})")))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| input_err(path, format!("malformed JSON ({e})")))?;
    if value.get("layers").is_some() {
        return Err(input_err(
            path,
            "is a layer plan ({\"layers\": [...]}); this command takes a pattern or a head \
             pattern set ({\"heads\": [...]})",
        ));
    }
    HeadPatterns::from_json(&text).map_err(|e| input_err(path, message(e)))
}

/// One component in a few characters: `window(1024)` is the `size` form (`left = 1023`,
/// `right = 0`), `window(-L,+R)` the general one.
pub fn component_text(c: &Component) -> String {
    match c {
        Component::Dense(_) => "dense".into(),
        Component::SlidingWindow(w) if w.right() == 0 => format!("window({})", w.left() + 1),
        Component::SlidingWindow(w) => format!("window(-{},+{})", w.left(), w.right()),
        Component::Sinks(s) => format!("sinks({})", s.count()),
        Component::Global(g) => {
            let t = g.tokens();
            let shown: Vec<String> = t.iter().take(4).map(|x| x.to_string()).collect();
            if t.len() > 4 {
                format!("global({},... {} tokens)", shown.join(","), t.len())
            } else {
                format!("global({})", shown.join(","))
            }
        }
        Component::Dilated(d) => format!("dilated({})", d.stride()),
        Component::Chunked(c) => format!("chunked({})", c.size()),
        Component::BlockMask(m) => {
            let ones: usize = (0..m.rows() as i64)
                .filter_map(|r| m.row(r))
                .map(|row| row.iter().filter(|&&b| b == 1).count())
                .sum();
            format!(
                "block_mask({}x{} blocks, {}x{} mask, {ones} on)",
                m.block_q(),
                m.block_k(),
                m.rows(),
                m.cols()
            )
        }
        Component::BigBird(b) => format!(
            "bigbird(block {}, window {}, global {}, random {}, seed {})",
            b.block(),
            b.window_blocks(),
            b.global_blocks(),
            b.random_blocks(),
            b.seed()
        ),
    }
}

/// `causal sinks(4) + window(1024)`; no components reads `dense`.
pub fn pattern_text(p: &Pattern) -> String {
    let body = if p.components.is_empty() {
        "dense".to_string()
    } else {
        p.components
            .iter()
            .map(component_text)
            .collect::<Vec<_>>()
            .join(" + ")
    };
    if p.causal {
        format!("causal {body}")
    } else {
        body
    }
}

/// A set in one line: the pattern when every head shares it, else runs of equal heads,
/// `heads 0-1: causal dilated(1); heads 2-3: causal dilated(2)`.
pub fn set_text(set: &HeadPatterns) -> String {
    match set {
        HeadPatterns::All(p) => pattern_text(p),
        HeadPatterns::PerHead(v) if v.iter().all(|p| p == &v[0]) => pattern_text(&v[0]),
        HeadPatterns::PerHead(v) => {
            let mut parts = Vec::new();
            let mut start = 0;
            for h in 1..=v.len() {
                if h == v.len() || v[h] != v[start] {
                    let heads = if h - 1 == start {
                        format!("head {start}")
                    } else {
                        format!("heads {start}-{}", h - 1)
                    };
                    parts.push(format!("{heads}: {}", pattern_text(&v[start])));
                    start = h;
                }
            }
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        let set = HeadPatterns::from_json(
            r#"{"heads": [
                {"causal": true, "components": [{"dilated": {"stride": 1}}]},
                {"causal": true, "components": [{"dilated": {"stride": 1}}]},
                {"causal": false, "components": [{"sliding_window": {"left": 3, "right": 2}},
                                                 {"global": {"tokens": [9, 1, 5, 7, 3]}}]},
                {"causal": true, "components": [{"sinks": {"count": 4}}, {"sliding_window": {"size": 64}}]}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            set_text(&set),
            "heads 0-1: causal dilated(1); head 2: window(-3,+2) + global(1,3,5,7,... 5 tokens); \
             head 3: causal sinks(4) + window(64)"
        );
        assert_eq!(
            set_text(&HeadPatterns::All(Pattern::causal())),
            "causal dense"
        );
        let bb = HeadPatterns::from_json(
            r#"{"causal": false, "components": [
                {"bigbird": {"block": 64, "window_blocks": 3, "global_blocks": 1, "random_blocks": 2, "seed": 5}},
                {"block_mask": {"block_q": 32, "block_k": 16, "mask": [[1, 0], [1, 1]]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            set_text(&bb),
            "bigbird(block 64, window 3, global 1, random 2, seed 5) + \
             block_mask(32x16 blocks, 2x2 mask, 3 on)"
        );
    }
}

//! The pattern form of an adaptive layer: `{"causal": bool, "components": [one adaptive
//! component]}`, read where static patterns are read (the CLI's `--pattern`).

use serde::Deserialize;

use super::params::AdaptiveComponent;
use super::plan::check_statics;
use crate::error::{Error, Result};
use crate::pattern::Component;

/// The names of the adaptive components (the keys of their JSON objects).
pub const ADAPTIVE_KINDS: [&str; 4] = ["top_k", "top_p", "top_rel", "lsh"];

/// An adaptive pattern: one adaptive component, optionally causal, in a union with up to two
/// static components of the interval forms (`dense`, `sliding_window`, `sinks`, `chunked`:
/// what [`super::AdaptivePlan::with_union`] runs), e.g. `{"causal": true, "components":
/// [{"top_k": {..}}, {"sliding_window": {"size": 256}}]}`. Two adaptive components, other
/// static kinds beside one, and per-head sets of adaptive patterns are refused
/// (`Error::Unsupported`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptivePattern {
    /// Keys after the query position are excluded.
    pub causal: bool,
    /// The adaptive component.
    pub component: AdaptiveComponent,
    /// The static components of the union (in the order given).
    pub statics: Vec<Component>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    causal: bool,
    components: Vec<serde_json::Value>,
}

impl AdaptivePattern {
    /// Reads `text` as a pattern: `Ok(None)` when it names no adaptive component (a static
    /// pattern or head set, for [`crate::pattern::HeadPatterns::from_json`]), the adaptive
    /// pattern when it does. Errors: `Error::Pattern` for a malformed component,
    /// `Error::Unsupported` for two adaptive components, a static component a selection does
    /// not join, or an adaptive component inside a per-head set.
    pub fn from_json(text: &str) -> Result<Option<Self>> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::Pattern(e.to_string()))?;
        let is_adaptive = |c: &serde_json::Value| {
            c.as_object()
                .is_some_and(|o| o.keys().any(|k| ADAPTIVE_KINDS.contains(&k.as_str())))
        };
        let names_adaptive = |p: &serde_json::Value| {
            p.get("components")
                .and_then(|c| c.as_array())
                .is_some_and(|cs| cs.iter().any(is_adaptive))
        };
        if let Some(heads) = value.get("heads").and_then(|h| h.as_array()) {
            if heads.iter().any(names_adaptive) {
                return Err(Error::Unsupported(
                    "per-head sets of adaptive patterns (give one adaptive pattern for all heads)"
                        .into(),
                ));
            }
            return Ok(None);
        }
        if !names_adaptive(&value) {
            return Ok(None);
        }
        let raw: Raw = serde_json::from_value(value).map_err(|e| Error::Pattern(e.to_string()))?;
        let (adaptive, statics): (Vec<_>, Vec<_>) =
            raw.components.into_iter().partition(is_adaptive);
        if adaptive.len() != 1 {
            return Err(Error::Unsupported(format!(
                "an adaptive pattern has one adaptive component (got {}: unions of two \
                 selections are not supported)",
                adaptive.len()
            )));
        }
        let component: AdaptiveComponent = serde_json::from_value(adaptive[0].clone())
            .map_err(|e| Error::Pattern(e.to_string()))?;
        let statics = statics
            .into_iter()
            .map(|c| serde_json::from_value(c).map_err(|e| Error::Pattern(e.to_string())))
            .collect::<Result<Vec<Component>>>()?;
        check_statics(&statics)?;
        Ok(Some(AdaptivePattern {
            causal: raw.causal,
            component,
            statics,
        }))
    }

    /// The pattern as the CLI prints it: the adaptive component's JSON, then ` ∪ ` and each
    /// static component's.
    pub fn describe(&self) -> String {
        let mut text = self.component.to_json();
        for c in &self.statics {
            text.push_str(" ∪ ");
            text.push_str(&serde_json::to_string(c).unwrap_or_default());
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_static_and_refused_forms() {
        let p = AdaptivePattern::from_json(
            r#"{"causal": true, "components": [{"top_k": {"block": 64, "k": 4}}]}"#,
        )
        .unwrap()
        .unwrap();
        assert!(p.causal);
        assert!(matches!(p.component, AdaptiveComponent::Select(_)));
        for static_pattern in [
            r#"{"causal": true, "components": []}"#,
            r#"{"causal": false, "components": [{"sinks": {"count": 4}}]}"#,
            r#"{"heads": [{"causal": true, "components": []}]}"#,
        ] {
            assert_eq!(AdaptivePattern::from_json(static_pattern).unwrap(), None);
        }
        let u = AdaptivePattern::from_json(
            r#"{"causal": true, "components": [{"sinks": {"count": 4}}, {"top_k": {"block": 64, "k": 4}}, {"sliding_window": {"size": 100}}]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            u.statics,
            vec![
                Component::sinks(4).unwrap(),
                Component::window_size(100).unwrap()
            ]
        );
        assert!(u.describe().contains("top_k") && u.describe().contains("sliding_window"));
        for (text, unsupported) in [
            (
                r#"{"causal": true, "components": [{"top_k": {"block": 64, "k": 4}}, {"top_p": {"block": 64, "p": 0.5}}]}"#,
                true,
            ),
            (
                r#"{"causal": true, "components": [{"top_k": {"block": 64, "k": 4}}, {"dilated": {"stride": 2}}]}"#,
                true,
            ),
            (
                r#"{"causal": true, "components": [{"top_k": {"block": 64, "k": 4}}, {"sinks": {"count": -1}}]}"#,
                false,
            ),
            (
                r#"{"heads": [{"causal": true, "components": [{"top_k": {"block": 64, "k": 4}}]}]}"#,
                true,
            ),
            (
                r#"{"causal": true, "components": [{"top_k": {"block": 48, "k": 4}}]}"#,
                false,
            ),
            (
                r#"{"causal": true, "extra": 1, "components": [{"top_k": {"block": 64, "k": 4}}]}"#,
                false,
            ),
        ] {
            let e = AdaptivePattern::from_json(text).unwrap_err();
            assert_eq!(
                matches!(e, Error::Unsupported(_)),
                unsupported,
                "{text}: {e}"
            );
            assert_eq!(matches!(e, Error::Pattern(_)), !unsupported, "{text}: {e}");
        }
    }
}

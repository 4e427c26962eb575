//! The pattern form of an adaptive layer: `{"causal": bool, "components": [one adaptive
//! component]}`, read where static patterns are read (the CLI's `--pattern`).

use serde::Deserialize;

use super::params::AdaptiveComponent;
use crate::error::{Error, Result};

/// The names of the adaptive components (the keys of their JSON objects).
pub const ADAPTIVE_KINDS: [&str; 4] = ["top_k", "top_p", "top_rel", "lsh"];

/// An adaptive pattern: one adaptive component, optionally causal. Unions of an adaptive
/// component with others (a window beside `top_k`) and per-head sets of adaptive patterns are
/// not supported yet (`Error::Unsupported`); the component's forced blocks (`keep_sinks`,
/// `keep_local`) cover the usual static part.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptivePattern {
    /// Keys after the query position are excluded.
    pub causal: bool,
    /// The component.
    pub component: AdaptiveComponent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    causal: bool,
    components: Vec<AdaptiveComponent>,
}

impl AdaptivePattern {
    /// Reads `text` as a pattern: `Ok(None)` when it names no adaptive component (a static
    /// pattern or head set, for [`crate::pattern::HeadPatterns::from_json`]), the adaptive
    /// pattern when it does. Errors: `Error::Pattern` for a malformed adaptive component,
    /// `Error::Unsupported` for an adaptive component beside other components or inside a
    /// per-head set.
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
        let n = value["components"].as_array().map_or(0, |c| c.len());
        if n != 1 {
            return Err(Error::Unsupported(format!(
                "an adaptive pattern has exactly one component (got {n}: unions of an adaptive \
                 component with others are not supported yet; keep_sinks / keep_local force \
                 the static blocks)"
            )));
        }
        let raw: Raw = serde_json::from_value(value).map_err(|e| Error::Pattern(e.to_string()))?;
        Ok(Some(AdaptivePattern {
            causal: raw.causal,
            component: raw.components[0],
        }))
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
        for (text, unsupported) in [
            (
                r#"{"causal": true, "components": [{"top_k": {"block": 64, "k": 4}}, {"sinks": {"count": 4}}]}"#,
                true,
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

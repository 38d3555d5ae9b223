//! Topic filters and topic templates.
//!
//! A filter (`sensors/+/temp`, `sensors/#`, `$share/group/sensors/#`) is checked when the
//! config is loaded, so a typo fails at start rather than as a broker refusal later. A
//! [`TopicTemplate`] (`sensors/{site}/{device}/{metric}`) names topic levels; each name becomes
//! a string column.

/// Checks an MQTT topic filter (MQTT 3.1.1 §4.7, MQTT 5 §4.8.2 for `$share`).
pub fn validate_filter(filter: &str) -> Result<(), String> {
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => {
            let (group, inner) = rest
                .split_once('/')
                .ok_or("a shared subscription is `$share/GROUP/filter`")?;
            if group.is_empty() || group.contains(['+', '#']) {
                return Err("the share group must be a non-empty name without wildcards".into());
            }
            inner
        }
        None => filter,
    };
    if inner.is_empty() {
        return Err("empty topic filter".into());
    }
    let levels: Vec<&str> = inner.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("`#` must be a whole level and the last one".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level".into());
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(String),
    Column(String),
    Any,
}

/// Topic levels mapped to columns: `sensors/{site}/{device}/{metric}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    levels: Vec<Level>,
    /// A final `#`: any number of further levels (zero included) is accepted.
    rest: bool,
}

impl TopicTemplate {
    /// Parses a template: levels are literals, `{name}` (a column), `+` (any one level), and a
    /// final `#` (any rest).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut levels = Vec::new();
        let mut rest = false;
        let parts: Vec<&str> = text.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == "#" {
                if i + 1 != parts.len() {
                    return Err("`#` may only be the last level".into());
                }
                rest = true;
            } else if *part == "+" {
                levels.push(Level::Any);
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(format!("`{part}` is not a column name"));
                }
                if levels.contains(&Level::Column(name.to_string())) {
                    return Err(format!("column `{name}` appears twice"));
                }
                levels.push(Level::Column(name.to_string()));
            } else if part.contains(['{', '}', '+', '#']) {
                return Err(format!(
                    "level `{part}` mixes text and placeholders: a level is text, `{{name}}`, `+` or `#`"
                ));
            } else {
                levels.push(Level::Literal(part.to_string()));
            }
        }
        if !levels.iter().any(|l| matches!(l, Level::Column(_))) {
            return Err("names no column: write levels as `{name}`".into());
        }
        Ok(TopicTemplate {
            text: text.to_string(),
            levels,
            rest,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Column names, in level order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Column(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// The column values of `topic`, in [`Self::columns`] order, or `None` when the topic does
    /// not match.
    pub fn extract<'t>(&self, topic: &'t str) -> Option<Vec<&'t str>> {
        let mut parts = topic.split('/');
        let mut values = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            let part = parts.next()?;
            match level {
                Level::Literal(l) if l != part => return None,
                Level::Literal(_) | Level::Any => {}
                Level::Column(_) => values.push(part),
            }
        }
        if parts.next().is_some() && !self.rest {
            return None;
        }
        Some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_follow_the_spec() {
        for ok in [
            "a",
            "a/b",
            "+",
            "#",
            "a/+/c",
            "a/#",
            "/",
            "$share/g/a/#",
            "$SYS/x",
        ] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+/b",
            "$share/g",
            "$share//a",
            "$share/g+/a",
        ] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_extract_levels_into_columns() {
        let t = TopicTemplate::parse("sensors/{site}/{device}/{metric}").unwrap();
        assert_eq!(
            t.columns().collect::<Vec<_>>(),
            ["site", "device", "metric"]
        );
        assert_eq!(
            t.extract("sensors/berlin/d-7/temp"),
            Some(vec!["berlin", "d-7", "temp"])
        );
        assert_eq!(t.extract("sensors/berlin/d-7"), None, "too short");
        assert_eq!(t.extract("sensors/berlin/d-7/temp/x"), None, "too long");
        assert_eq!(
            t.extract("actuators/berlin/d-7/temp"),
            None,
            "literal differs"
        );

        let t = TopicTemplate::parse("+/{device}/#").unwrap();
        assert_eq!(t.extract("x/d1"), Some(vec!["d1"]));
        assert_eq!(t.extract("x/d1/a/b"), Some(vec!["d1"]));
        assert_eq!(t.extract("x"), None);
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(TopicTemplate::parse("a/b")
            .unwrap_err()
            .contains("names no column"));
        assert!(TopicTemplate::parse("{a}/{a}")
            .unwrap_err()
            .contains("twice"));
        assert!(TopicTemplate::parse("x{a}").unwrap_err().contains("mixes"));
        assert!(TopicTemplate::parse("#/{a}").unwrap_err().contains("last"));
    }
}

//! How operational log lines are written: one JSON object per line (for log shippers) or text
//! (for people at a terminal). Audit lines are JSON whatever the format.

use std::io::IsTerminal;

/// The format of operational log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text, coloured on a terminal.
    Text,
}

impl LogFormat {
    /// `json` or `text` (any case), else `None`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "text" => Some(Self::Text),
            _ => None,
        }
    }

    /// The default: text for a person at a terminal, JSON when stderr goes to a file, a pipe
    /// or a container runtime.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::Text
        } else {
            Self::Json
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_text_only() {
        assert_eq!(LogFormat::parse("json"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse(" TEXT "), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("pretty"), None);
        assert_eq!(LogFormat::parse(""), None);
    }
}

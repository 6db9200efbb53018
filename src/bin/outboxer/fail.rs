//! The command's one error: a readable message and an exit code.

use std::fmt;
use std::process::ExitCode;

/// Exit code of a runtime failure (database, broker, I/O).
pub const RUNTIME: u8 = 1;
/// Exit code of a usage error (bad flag, URL, setting or config file); clap uses it too.
pub const USAGE: u8 = 2;

#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
    /// A TLS mistake (`Error::Tls`): a certificate, CA file or TLS setting.
    pub tls: bool,
}

impl Fail {
    pub fn usage(message: impl Into<String>) -> Fail {
        Fail {
            code: USAGE,
            message: message.into(),
            tls: false,
        }
    }

    pub fn runtime(message: impl Into<String>) -> Fail {
        Fail {
            code: RUNTIME,
            message: message.into(),
            tls: false,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The library's errors never hold secrets (URLs are redacted there). Bad settings,
/// names and URLs are usage errors; everything else is a runtime failure.
impl From<outboxer::Error> for Fail {
    fn from(e: outboxer::Error) -> Fail {
        use outboxer::Error as E;
        let tls = matches!(e, E::Tls { .. });
        let code = match e {
            E::Config { .. } | E::InvalidIdentifier { .. } | E::InvalidUrl { .. } => USAGE,
            _ => RUNTIME,
        };
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        Fail { code, message, tls }
    }
}

//! Firecracker's log lines: `<timestamp> [<id>:<thread>[:<LEVEL>][:<file>:<line>]] <message>`,
//! to stdout unless `--log-path` or `PUT /logger` names a file. The API's lines come
//! from thread `fc_api`, the VMM's from `main`, as in Firecracker; `--level`,
//! `--show-level`, `--show-log-origin` and their `PUT /logger` fields apply.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use banger_fc::models::{LogLevel, Logger as LoggerConfig};

#[derive(Debug)]
struct Settings {
    target: Option<File>,
    level: LogLevel,
    show_level: bool,
    show_origin: bool,
}

#[derive(Debug, Clone)]
pub struct Logger {
    id: String,
    settings: Arc<Mutex<Settings>>,
}

impl Logger {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            settings: Arc::new(Mutex::new(Settings {
                target: None,
                level: LogLevel::Info,
                show_level: false,
                show_origin: false,
            })),
        }
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn redirect(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking, as Firecracker opens it: a FIFO without a reader does not hang
        // the API.
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        self.settings().target = Some(f);
        Ok(())
    }

    /// `PUT /logger` (or the command line): the level is reset to Info when absent,
    /// the flags kept when absent, as Firecracker's `Logger::update` does.
    pub fn configure(&self, c: &LoggerConfig) {
        let mut s = self.settings();
        s.level = c.level.unwrap_or(LogLevel::Info);
        if let Some(v) = c.show_level {
            s.show_level = v;
        }
        if let Some(v) = c.show_log_origin {
            s.show_origin = v;
        }
    }

    #[track_caller]
    pub fn main_info(&self, msg: &str) {
        self.write("main", LogLevel::Info, msg);
    }

    #[track_caller]
    pub fn main_warn(&self, msg: &str) {
        self.write("main", LogLevel::Warning, msg);
    }

    #[track_caller]
    pub fn api(&self, level: LogLevel, msg: &str) {
        self.write("fc_api", level, msg);
    }

    #[track_caller]
    fn write(&self, thread: &str, level: LogLevel, msg: &str) {
        let origin = std::panic::Location::caller();
        let mut s = self.settings();
        if level > s.level || level == LogLevel::Off {
            return;
        }
        let line = format_line(
            &self.id,
            thread,
            s.show_level.then_some(level),
            s.show_origin.then(|| (origin.file(), origin.line())),
            msg,
        );
        match s.target.as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stdout().write_all(line.as_bytes());
            }
        }
    }
}

fn level_name(l: LogLevel) -> &'static str {
    match l {
        LogLevel::Error => "ERROR",
        LogLevel::Warning => "WARN",
        LogLevel::Info => "INFO",
        LogLevel::Debug => "DEBUG",
        LogLevel::Trace => "TRACE",
        LogLevel::Off => "OFF",
    }
}

fn format_line(
    id: &str,
    thread: &str,
    level: Option<LogLevel>,
    origin: Option<(&str, u32)>,
    msg: &str,
) -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut tag = format!("{id}:{thread}");
    if let Some(l) = level {
        tag.push(':');
        tag.push_str(level_name(l));
    }
    if let Some((file, line)) = origin {
        tag.push_str(&format!(":{file}:{line}"));
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09} [{tag}] {msg}\n",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_level_and_origin_when_asked() {
        let plain = format_line("vm1", "fc_api", None, None, "hello");
        assert!(plain.ends_with(" [vm1:fc_api] hello\n"), "{plain}");
        let full = format_line(
            "vm1",
            "main",
            Some(LogLevel::Warning),
            Some(("src/x.rs", 7)),
            "m",
        );
        assert!(full.ends_with(" [vm1:main:WARN:src/x.rs:7] m\n"), "{full}");
        assert_eq!(plain.as_bytes()[4], b'-');
        assert_eq!(plain.as_bytes()[10], b'T');
    }

    #[test]
    fn the_level_filters_and_put_logger_resets_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = Logger::new("vm1");
        log.redirect(&path).unwrap();
        log.configure(&LoggerConfig {
            level: Some(LogLevel::Warning),
            show_level: Some(true),
            ..Default::default()
        });
        log.api(LogLevel::Info, "dropped");
        log.main_warn("kept");
        log.configure(&LoggerConfig::default());
        log.api(LogLevel::Info, "info again");
        log.api(LogLevel::Debug, "debug dropped");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("dropped"), "{text}");
        assert!(text.contains("[vm1:main:WARN] kept"), "{text}");
        assert!(
            text.contains("[vm1:fc_api:INFO] info again"),
            "show_level kept: {text}"
        );
    }
}

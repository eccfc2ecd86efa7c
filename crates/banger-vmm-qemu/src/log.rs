//! Firecracker-style log lines: `<timestamp> [<id>:<thread>] <message>`, to stdout
//! unless `--log-path` or PUT /logger names a file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Logger {
    id: String,
    target: Arc<Mutex<Option<File>>>,
}

impl Logger {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            target: Arc::new(Mutex::new(None)),
        }
    }

    pub fn redirect(&self, path: &Path) -> std::io::Result<()> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        *self.target.lock().expect("logger lock") = Some(f);
        Ok(())
    }

    pub fn info(&self, msg: &str) {
        self.write("", msg);
    }

    pub fn warn(&self, msg: &str) {
        self.write(":WARN", msg);
    }

    fn write(&self, level: &str, msg: &str) {
        let now = time::OffsetDateTime::now_utc();
        let ts = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.nanosecond()
        );
        let line = format!("{ts} [{}:main{level}] {msg}\n", self.id);
        let mut t = self.target.lock().expect("logger lock");
        match t.as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stdout().write_all(line.as_bytes());
            }
        }
    }
}

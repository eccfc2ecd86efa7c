//! Where a verb's time goes: named steps, each with the time since the one before,
//! logged at debug level (`BANGER_LOG=bangerd=debug`) as one line per verb.

use std::fmt;
use std::time::{Duration, Instant};

pub(crate) struct Timeline {
    start: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Timeline {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Timeline {
            start: now,
            last: now,
            steps: Vec::new(),
        }
    }

    /// Ends the step `name` now.
    pub(crate) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }

    pub(crate) fn total(&self) -> Duration {
        self.last - self.start
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, d) in &self.steps {
            write!(f, "{name} {:.2} ms, ", d.as_secs_f64() * 1e3)?;
        }
        write!(f, "total {:.2} ms", self.total().as_secs_f64() * 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_up_to_the_total_and_print_in_order() {
        let mut t = Timeline::new();
        std::thread::sleep(Duration::from_millis(2));
        t.mark("first");
        t.mark("second");
        let sum: Duration = t.steps.iter().map(|(_, d)| *d).sum();
        assert_eq!(sum, t.total());
        assert!(t.steps[0].1 >= Duration::from_millis(2));
        let s = t.to_string();
        assert!(s.starts_with("first "), "{s}");
        assert!(
            s.find("second ").unwrap() > s.find("first ").unwrap(),
            "{s}"
        );
        assert!(s.ends_with(" ms") && s.contains("total "), "{s}");
    }
}

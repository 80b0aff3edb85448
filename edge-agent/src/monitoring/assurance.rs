//! The assurance output: a digital line (embedded-hal 1.0 `OutputPin`) raised when a
//! prediction set calls for a human or a fallback (by default: empty, or more than one
//! label) and lowered otherwise, one update per answered input, in order.

use std::sync::{Arc, Mutex};

use embedded_hal::digital::{ErrorType, OutputPin};
use serde::{Deserialize, Serialize};

/// When the line goes high.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AlertRule {
    /// Empty set or more than one label.
    #[default]
    NotSingleton,
    /// Empty set only.
    Empty,
    /// More than one label only.
    Multiple,
    /// Never (the line stays low).
    Never,
}

impl AlertRule {
    /// Whether a set of `size` labels raises the line.
    pub fn raises(self, size: usize) -> bool {
        match self {
            AlertRule::NotSingleton => size != 1,
            AlertRule::Empty => size == 0,
            AlertRule::Multiple => size > 1,
            AlertRule::Never => false,
        }
    }
}

/// An output line with its error type erased (so the service holds any pin).
pub trait Line: Send {
    fn set(&mut self, high: bool) -> Result<(), String>;
}

impl<P> Line for P
where
    P: OutputPin + Send,
    P::Error: std::fmt::Debug,
{
    fn set(&mut self, high: bool) -> Result<(), String> {
        let r = if high {
            self.set_high()
        } else {
            self.set_low()
        };
        r.map_err(|e| format!("{e:?}"))
    }
}

/// The rule and the line it drives.
pub struct Assurance {
    rule: AlertRule,
    line: Mutex<Box<dyn Line>>,
}

impl std::fmt::Debug for Assurance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assurance")
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl Assurance {
    pub fn new(rule: AlertRule, line: Box<dyn Line>) -> Self {
        Assurance {
            rule,
            line: Mutex::new(line),
        }
    }

    pub fn rule(&self) -> AlertRule {
        self.rule
    }

    /// Drives the line for answers with these set sizes, in order. A line that fails is
    /// logged, never fatal to the answer.
    pub fn update(&self, set_sizes: impl IntoIterator<Item = usize>) {
        let mut line = match self.line.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        for size in set_sizes {
            if let Err(e) = line.set(self.rule.raises(size)) {
                tracing::warn!(error = %e, "assurance output: cannot drive the line");
            }
        }
    }
}

/// A pin that records every state it is set to (tests, and `--pin memory`).
#[derive(Clone, Debug, Default)]
pub struct MemoryPin {
    states: Arc<Mutex<Vec<bool>>>,
}

impl MemoryPin {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every state set so far, in order (true = high).
    pub fn states(&self) -> Vec<bool> {
        match self.states.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn push(&self, high: bool) {
        match self.states.lock() {
            Ok(mut s) => s.push(high),
            Err(p) => p.into_inner().push(high),
        }
    }
}

impl ErrorType for MemoryPin {
    type Error = core::convert::Infallible;
}

impl OutputPin for MemoryPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.push(false);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.push(true);
        Ok(())
    }
}

/// A line of a Linux GPIO character device (`/dev/gpiochipN`, line `offset`), requested as
/// an output that starts low.
#[cfg(feature = "gpio")]
pub fn gpio_line(chip: &str, offset: u32) -> Result<Box<dyn Line>, String> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    let mut chip = Chip::new(chip).map_err(|e| format!("{chip}: {e}"))?;
    let handle = chip
        .get_line(offset)
        .and_then(|l| l.request(LineRequestFlags::OUTPUT, 0, "edge-agent"))
        .map_err(|e| format!("line {offset}: {e}"))?;
    let pin = linux_embedded_hal::CdevPin::new(handle).map_err(|e| format!("{e:?}"))?;
    Ok(Box::new(pin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_follows_the_rule_for_each_answer_in_order() {
        let pin = MemoryPin::new();
        let a = Assurance::new(AlertRule::NotSingleton, Box::new(pin.clone()));
        a.update([1, 0, 1, 2, 1, 1, 5]);
        assert_eq!(pin.states(), [false, true, false, true, false, false, true]);
        let pin = MemoryPin::new();
        let a = Assurance::new(AlertRule::Empty, Box::new(pin.clone()));
        a.update([1, 0, 2]);
        assert_eq!(pin.states(), [false, true, false]);
        let pin = MemoryPin::new();
        Assurance::new(AlertRule::Multiple, Box::new(pin.clone())).update([0, 2, 1]);
        assert_eq!(pin.states(), [false, true, false]);
    }
}

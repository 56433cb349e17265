//! The inputs the engine decides with besides the person: the mode's
//! policy, visitor-pass facts, anti-passback state and the health hook.

use crate::health::{HealthFallback, HealthRules};
use gate_core::{BlockReason, Category, Mode, UnixMillis};

/// A set of categories (three bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CategorySet(u8);

impl CategorySet {
    pub const NONE: CategorySet = CategorySet(0);
    pub const ALL: CategorySet = CategorySet(0b111);

    fn bit(c: Category) -> u8 {
        match c {
            Category::Resident => 1,
            Category::Worker => 2,
            Category::Visitor => 4,
        }
    }

    pub fn of(categories: &[Category]) -> Self {
        CategorySet(categories.iter().fold(0, |acc, c| acc | Self::bit(*c)))
    }

    pub fn contains(self, c: Category) -> bool {
        self.0 & Self::bit(c) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Category> {
        Category::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

/// What one mode allows (`[policy.<mode>]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub allowed_categories: CategorySet,
    /// A visitor passes only with a valid QR pass.
    pub visitor_pass_required: bool,
    /// Workers' weekly time windows are enforced.
    pub enforce_time_windows: bool,
    /// Categories that must pass health verification in this mode.
    pub health_required_for: CategorySet,
    /// The health rules of this mode, per category.
    pub health_rules: HealthRulesByCategory,
}

/// Health rules per category (`[policy.<mode>.health]` and its
/// `resident` / `worker` / `visitor` subtables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRulesByCategory {
    pub resident: HealthRules,
    pub worker: HealthRules,
    pub visitor: HealthRules,
}

impl HealthRulesByCategory {
    /// The same rules for every category.
    pub fn all(rules: HealthRules) -> Self {
        HealthRulesByCategory { resident: rules.clone(), worker: rules.clone(), visitor: rules }
    }

    pub fn for_category(&self, category: Category) -> &HealthRules {
        match category {
            Category::Resident => &self.resident,
            Category::Worker => &self.worker,
            Category::Visitor => &self.visitor,
        }
    }
}

impl Policy {
    /// The shipped defaults: normal admits residents, workers and visitors
    /// with a pass; sporadic adds health checks for everyone; wartime admits
    /// only verified residents and workers (and flexible checkpoints close).
    pub fn default_for(mode: Mode) -> Policy {
        use Category::*;
        match mode {
            Mode::Normal => Policy {
                allowed_categories: CategorySet::ALL,
                visitor_pass_required: true,
                enforce_time_windows: true,
                health_required_for: CategorySet::NONE,
                health_rules: HealthRulesByCategory::all(HealthRules::default()),
            },
            Mode::Sporadic => Policy {
                allowed_categories: CategorySet::ALL,
                visitor_pass_required: true,
                enforce_time_windows: true,
                health_required_for: CategorySet::ALL,
                // A sporadic outbreak: a 72-hour test, and a stale record is
                // still accepted for two days when the platform is away.
                health_rules: HealthRulesByCategory::all(HealthRules {
                    nat_window_h: 72,
                    fallback: HealthFallback::AcceptStale { max_age_h: 48 },
                    ..HealthRules::default()
                }),
            },
            Mode::Wartime => Policy {
                allowed_categories: CategorySet::of(&[Resident, Worker]),
                visitor_pass_required: true,
                enforce_time_windows: true,
                health_required_for: CategorySet::of(&[Resident, Worker]),
                // Wartime: a 48-hour test, no stale record accepted.
                health_rules: HealthRulesByCategory::all(HealthRules {
                    nat_window_h: 48,
                    fallback: HealthFallback::Refuse,
                    ..HealthRules::default()
                }),
            },
        }
    }
}

/// Anti-passback at this gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AntiPassback {
    #[default]
    Off,
    /// An entry must be followed by an exit before the next entry.
    Paired,
    /// The same side again only after `window_ms`.
    Timed { window_ms: i64 },
}

/// Which side of the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Entry,
    Exit,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Entry => "entry",
            Side::Exit => "exit",
        }
    }

    pub fn parse(raw: &str) -> Option<Side> {
        match raw {
            "entry" => Some(Side::Entry),
            "exit" => Some(Side::Exit),
            _ => None,
        }
    }
}

/// The last granted passage of a person at this gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastPassage {
    pub side: Side,
    pub at_ms: UnixMillis,
}

/// A visitor pass whose signature verified, with its local state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassFacts {
    pub pass_id: String,
    pub valid_from_ms: UnixMillis,
    pub valid_to_ms: UnixMillis,
    /// Empty means every gate of the site.
    pub allowed_gates: Vec<String>,
    /// 0 means unlimited.
    pub max_uses: u32,
    pub uses_so_far: u32,
    pub revoked: bool,
}

/// Shorthand for tests and callers that describe a pass by its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassState {
    Valid,
    Expired,
    WrongGate,
    UsedUp,
    Revoked,
}

/// The health hook: what health verification concluded for this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthCheck {
    /// Nobody checked (health is not wired in, or not needed).
    #[default]
    NotChecked,
    Passed,
    Failed(BlockReason),
    /// Required, but no usable record and the platform did not answer.
    Unavailable,
}

//! The migrations a build knows, per SQL dialect.

use refinery::Migration;

use super::StoreError;

const SQLITE: &[(&str, &str)] = &[
    (
        "V1__initial",
        include_str!("../../../migrations/sqlite/V1__initial.sql"),
    ),
    (
        "V2__sidecar_version",
        include_str!("../../../migrations/sqlite/V2__sidecar_version.sql"),
    ),
    (
        "V3__endpoints",
        include_str!("../../../migrations/sqlite/V3__endpoints.sql"),
    ),
    (
        "V4__federation",
        include_str!("../../../migrations/sqlite/V4__federation.sql"),
    ),
    (
        "V5__usage",
        include_str!("../../../migrations/sqlite/V5__usage.sql"),
    ),
    (
        "V6__usage_reports",
        include_str!("../../../migrations/sqlite/V6__usage_reports.sql"),
    ),
];

const POSTGRES: &[(&str, &str)] = &[
    (
        "V1__initial",
        include_str!("../../../migrations/postgres/V1__initial.sql"),
    ),
    (
        "V2__sidecar_version",
        include_str!("../../../migrations/postgres/V2__sidecar_version.sql"),
    ),
    (
        "V3__endpoints",
        include_str!("../../../migrations/postgres/V3__endpoints.sql"),
    ),
    (
        "V4__federation",
        include_str!("../../../migrations/postgres/V4__federation.sql"),
    ),
    (
        "V5__usage",
        include_str!("../../../migrations/postgres/V5__usage.sql"),
    ),
    (
        "V6__usage_reports",
        include_str!("../../../migrations/postgres/V6__usage_reports.sql"),
    ),
];

/// Which SQL dialect a set of migrations is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The migrations a control plane knows: this build's, or (tests) a prefix
/// of them or extra ones after them.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    pub(super) steps: Vec<(String, String)>,
}

impl MigrationSet {
    /// Everything this build knows for `dialect`.
    pub fn builtin(dialect: Dialect) -> Self {
        let steps = match dialect {
            Dialect::Sqlite => SQLITE,
            Dialect::Postgres => POSTGRES,
        };
        MigrationSet {
            steps: steps
                .iter()
                .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
                .collect(),
        }
    }

    /// Only the steps up to `version`: what an older control plane knows.
    pub fn up_to(mut self, version: i32) -> Self {
        self.steps
            .retain(|(name, _)| version_of(name).is_some_and(|v| v <= version));
        self
    }

    /// One more step, `V<n>__<name>` (tests: a step that fails half way).
    pub fn with(mut self, name: &str, sql: &str) -> Self {
        self.steps.push((name.to_owned(), sql.to_owned()));
        self.steps.sort_by_key(|(name, _)| version_of(name));
        self
    }

    /// The newest version in the set.
    pub fn newest(&self) -> i32 {
        self.steps
            .iter()
            .filter_map(|(n, _)| version_of(n))
            .max()
            .unwrap_or(0)
    }

    pub(super) fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        self.steps
            .iter()
            .map(|(name, sql)| {
                Migration::unapplied(name, sql)
                    .map_err(|e| StoreError::schema(format!("migration {name}: {e}")))
            })
            .collect()
    }
}

fn version_of(name: &str) -> Option<i32> {
    name.strip_prefix('V')?.split_once("__")?.0.parse().ok()
}

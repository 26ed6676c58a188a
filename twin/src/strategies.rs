//! The strategies `twin check` compares: a built-in set covering every dimension the executor
//! runs, or the user's strategy files.

use std::path::Path;

use pangu_strategies::StrategySpec;

use crate::TwinError;

/// A strategy and the name its rows carry.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedStrategy {
    /// The file's path, or the built-in strategy's TOML on one line.
    pub name: String,
    /// The strategy.
    pub spec: StrategySpec,
}

/// The built-in strategies of `twin check` (global batch 8 of pangu-alpha-tiny): data, tensor
/// (with and without sequence parallelism) and pipeline parallelism under each schedule,
/// optimizer sharding, remat, and their combinations.
pub const BUILT_IN: &[&str] = &[
    "dp = 1",
    "dp = 2",
    "dp = 2\nopt_shard = \"zero1\"",
    "tp = 2",
    "tp = 2\nseq_parallel = true",
    "pp = 2\nmicro_batches = 4\nschedule = \"1f1b\"",
    "pp = 2\nmicro_batches = 4\nschedule = \"gpipe\"",
    "pp = 2\nmicro_batches = 4\nschedule = \"interleaved:2\"",
    "dp = 1\nremat = \"full\"",
    "dp = 2\nremat = \"selective\"",
    "dp = 2\ntp = 2",
    "tp = 2\npp = 2\nmicro_batches = 4",
];

/// The built-in set, each named by its TOML on one line.
pub fn built_in() -> Result<Vec<NamedStrategy>, TwinError> {
    BUILT_IN
        .iter()
        .map(|text| {
            Ok(NamedStrategy {
                name: text.replace('\n', " "),
                spec: StrategySpec::from_toml(text, "built-in")?,
            })
        })
        .collect()
}

/// Strategy files, each named by its path.
pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<NamedStrategy>, TwinError> {
    paths
        .iter()
        .map(|p| {
            let name = p.as_ref().display().to_string();
            let text = std::fs::read_to_string(p).map_err(|source| TwinError::ReadStrategy {
                path: name.clone(),
                source,
            })?;
            let spec = StrategySpec::from_toml(&text, &name)?;
            Ok(NamedStrategy { name, spec })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_set_reads_and_names_each_strategy_on_one_line() -> Result<(), TwinError> {
        let set = built_in()?;
        assert_eq!(set.len(), BUILT_IN.len());
        assert!(set.iter().all(|s| !s.name.contains('\n')));
        assert_eq!(set[3].spec.tp, Some(2));
        Ok(())
    }

    #[test]
    fn a_missing_file_keeps_its_cause() {
        let err = from_files(&["/nonexistent/s.toml"]).err();
        assert!(
            matches!(&err, Some(TwinError::ReadStrategy { path, .. }) if path == "/nonexistent/s.toml"),
            "{err:?}"
        );
        let cause = err.as_ref().and_then(std::error::Error::source);
        assert!(cause.is_some());
    }
}

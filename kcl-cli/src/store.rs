//! Naming a lease table on a command line, as every Kinesin binary does:
//! `--lease-table sqlite:PATH|dynamodb|dynamodb:NAME` with `--application NAME`.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use kcl_core::lease::{LeaseError, LeaseTable};
use kcl_lease_dynamo::DynamoLeaseTable;
use kcl_lease_sqlite::SqliteLeaseTable;

/// Where leases live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStore {
    /// A SQLite file (one host).
    Sqlite(PathBuf),
    /// A DynamoDB table: named after the application (`None`) or given.
    Dynamo(Option<String>),
}

/// Parses `sqlite:PATH`, `dynamodb` or `dynamodb:TABLE`.
pub fn parse_lease_store(value: &str) -> Result<LeaseStore, String> {
    if let Some(path) = value.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err("sqlite: needs a path".into());
        }
        Ok(LeaseStore::Sqlite(PathBuf::from(path)))
    } else if value == "dynamodb" {
        Ok(LeaseStore::Dynamo(None))
    } else if let Some(table) = value.strip_prefix("dynamodb:") {
        if table.is_empty() {
            return Err("dynamodb: needs a table name".into());
        }
        Ok(LeaseStore::Dynamo(Some(table.to_owned())))
    } else {
        Err("expected sqlite:PATH, dynamodb or dynamodb:TABLE".into())
    }
}

impl FromStr for LeaseStore {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_lease_store(s)
    }
}

/// Whether opening may create what is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Create the file or table if missing (a worker starting the application).
    IfMissing,
    /// Refuse a missing file or table (an operator's tool must not create one by a typo).
    Never,
}

/// Opens the lease table of `application` in `store`. DynamoDB uses the standard AWS
/// configuration (environment, profile, instance role; `AWS_ENDPOINT_URL_DYNAMODB`).
pub async fn open(
    store: &LeaseStore,
    application: &str,
    create: Create,
) -> Result<Arc<dyn LeaseTable>, LeaseError> {
    Ok(match store {
        LeaseStore::Sqlite(path) => {
            if create == Create::Never && !path.exists() {
                return Err(LeaseError::Misconfigured(format!(
                    "SQLite lease file {} does not exist",
                    path.display()
                )));
            }
            Arc::new(SqliteLeaseTable::open(path, application).await?)
        }
        LeaseStore::Dynamo(name) => {
            let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let table = name.as_deref().unwrap_or(application);
            Arc::new(
                DynamoLeaseTable::builder(table)
                    .application(application)
                    .create_if_missing(create == Create::IfMissing)
                    .build(&config)
                    .await?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_refuses_others() {
        assert_eq!(
            parse_lease_store("sqlite:/tmp/l.db"),
            Ok(LeaseStore::Sqlite("/tmp/l.db".into()))
        );
        assert_eq!(parse_lease_store("dynamodb"), Ok(LeaseStore::Dynamo(None)));
        assert_eq!(
            parse_lease_store("dynamodb:T"),
            Ok(LeaseStore::Dynamo(Some("T".into())))
        );
        assert!(parse_lease_store("sqlite:").is_err());
        assert!(parse_lease_store("dynamodb:").is_err());
        assert!(parse_lease_store("postgres:x").is_err());
    }

    #[tokio::test]
    async fn a_missing_sqlite_file_is_refused_without_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.db");
        let error = open(&LeaseStore::Sqlite(path.clone()), "app", Create::Never)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
        assert!(!path.exists());
    }
}

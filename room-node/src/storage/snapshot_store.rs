//! Where the remote backend keeps snapshots: an object store (S3, GCS,
//! Azure, a local directory, memory) or the log's Redis, chosen once from
//! the `--store` URL. Reading and writing them is [`super::remote`]'s job.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;

use super::remote::RemoteError;

/// Where snapshots go.
#[derive(Clone)]
pub enum SnapshotStore {
    /// An object store (S3, GCS, Azure, local directory, memory).
    Object(Arc<dyn ObjectStore>),
    /// Values in the log's Redis.
    Redis,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Object(store) => write!(f, "Object({store})"),
            Self::Redis => f.write_str("Redis"),
        }
    }
}

impl SnapshotStore {
    /// Parses a `--store` URL. Object store options (credentials, region,
    /// endpoint) come from the usual environment variables, e.g.
    /// `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`.
    pub fn from_url(url: &str) -> Result<Self, RemoteError> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(Self::Redis);
        }
        if let Some(path) = url.strip_prefix("file://") {
            std::fs::create_dir_all(path).map_err(|e| {
                RemoteError::Object(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                })
            })?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(path)?;
            return Ok(Self::Object(Arc::new(store)));
        }
        if url.starts_with("memory://") {
            return Ok(Self::Object(
                Arc::new(object_store::memory::InMemory::new()),
            ));
        }
        let parsed =
            url::Url::parse(url).map_err(|_| RemoteError::UnsupportedStore(url.to_owned()))?;
        let (scheme, prefix) = object_store::ObjectStoreScheme::parse(&parsed)
            .map_err(|_| RemoteError::UnsupportedStore(url.to_owned()))?;
        let options: Vec<(String, String)> = std::env::vars()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        // Bounded: an unreachable store fails a request in seconds (the
        // room retries the snapshot later) instead of object_store's
        // default of minutes.
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        };
        // The three cloud builders share one shape: the URL, every option
        // their config keys know, the bounded retry.
        macro_rules! cloud {
            ($builder:ty) => {{
                let mut builder = <$builder>::new().with_url(url);
                for (key, value) in &options {
                    if let Ok(key) = key.parse() {
                        builder = builder.with_config(key, value);
                    }
                }
                Arc::new(builder.with_retry(retry).build()?) as Arc<dyn ObjectStore>
            }};
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            object_store::ObjectStoreScheme::AmazonS3 => cloud!(object_store::aws::AmazonS3Builder),
            object_store::ObjectStoreScheme::GoogleCloudStorage => {
                cloud!(object_store::gcp::GoogleCloudStorageBuilder)
            }
            object_store::ObjectStoreScheme::MicrosoftAzure => {
                cloud!(object_store::azure::MicrosoftAzureBuilder)
            }
            _ => return Err(RemoteError::UnsupportedStore(url.to_owned())),
        };
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            store
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(Self::Object(store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_parsed_or_refused() {
        assert!(matches!(
            SnapshotStore::from_url("redis://127.0.0.1:6379"),
            Ok(SnapshotStore::Redis)
        ));
        assert!(matches!(
            SnapshotStore::from_url("memory://"),
            Ok(SnapshotStore::Object(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        assert!(matches!(
            SnapshotStore::from_url(&url),
            Ok(SnapshotStore::Object(_))
        ));
        assert!(matches!(
            SnapshotStore::from_url("ftp://x/y"),
            Err(RemoteError::UnsupportedStore(_))
        ));
    }
}

//! The MMDS data store behind `PUT`/`PATCH`/`GET /mmds`, with Firecracker's rules
//! (`src/vmm/src/mmds/data_store.rs`): it starts uninitialised, a PUT initialises it,
//! a PATCH before that is refused, and the compact JSON of the whole store may not
//! exceed the size limit (`--mmds-size-limit`, by default the API payload limit).

pub mod guest;
pub mod net;

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdsError {
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    #[error("The MMDS patch request doesn't fit.")]
    DataStoreLimitExceeded,
}

#[derive(Debug)]
pub struct DataStore {
    data: Value,
    initialized: bool,
    limit: usize,
}

impl DataStore {
    pub fn new(limit: usize) -> Self {
        Self {
            data: Value::Null,
            initialized: false,
            limit,
        }
    }

    /// What `GET /mmds` answers: `{}` for a store never written (or set to null).
    pub fn get(&self) -> Value {
        if self.data.is_null() {
            json!({})
        } else {
            self.data.clone()
        }
    }

    /// The data as stored (null before any PUT), as the guest reads it.
    pub fn raw(&self) -> &Value {
        &self.data
    }

    pub fn put(&mut self, data: Value) -> Result<(), MmdsError> {
        self.check_fits(&data)?;
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// RFC 7396 merge patch; the store is unchanged when the result does not fit.
    pub fn patch(&mut self, patch: Value) -> Result<(), MmdsError> {
        if !self.initialized {
            return Err(MmdsError::NotInitialized);
        }
        let mut next = self.data.clone();
        merge(&mut next, patch);
        self.check_fits(&next)?;
        self.data = next;
        Ok(())
    }

    fn check_fits(&self, data: &Value) -> Result<(), MmdsError> {
        let len = serde_json::to_vec(data)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if len > self.limit {
            return Err(MmdsError::DataStoreLimitExceeded);
        }
        Ok(())
    }
}

/// RFC 7396 merge: `null` removes a key, objects merge, anything else replaces.
fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target
                .as_object_mut()
                .expect("an object was just put there");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_needs_a_put_first_and_nothing_may_outgrow_the_limit() {
        let mut s = DataStore::new(20);
        assert_eq!(s.get(), json!({}));
        assert_eq!(s.patch(json!({"a": 1})), Err(MmdsError::NotInitialized));
        s.put(json!({"a": {"b": 1, "c": 2}})).unwrap();
        s.patch(json!({"a": {"b": null, "d": 3}})).unwrap();
        assert_eq!(s.get(), json!({"a": {"c": 2, "d": 3}}));
        // {"a":{"c":2,"d":3}} is 19 bytes: one more key does not fit, and changes nothing.
        assert_eq!(
            s.patch(json!({"e": 1})),
            Err(MmdsError::DataStoreLimitExceeded)
        );
        assert_eq!(s.get(), json!({"a": {"c": 2, "d": 3}}));
        assert_eq!(
            s.put(json!({"x": "0123456789abcdef"})),
            Err(MmdsError::DataStoreLimitExceeded)
        );
        s.put(Value::Null).unwrap();
        assert_eq!(s.get(), json!({}));
        // Exactly at the limit fits.
        let mut s = DataStore::new(7);
        s.put(json!({"a":1})).unwrap();
        assert_eq!(
            s.put(json!({"a":10})),
            Err(MmdsError::DataStoreLimitExceeded)
        );
    }
}

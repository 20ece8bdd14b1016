//! The registry error body: `{"errors":[{"code","message","detail"}]}` (OCI distribution
//! spec, "Error Codes"), with the HTTP status each code goes with.

use serde::Serialize;

/// The error codes the mirror itself emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    NameInvalid,
    NameUnknown,
    ManifestInvalid,
    ManifestUnknown,
    DigestInvalid,
    Unsupported,
    Unauthorized,
    Denied,
    Toomanyrequests,
    Unknown,
}

/// One error in the registry's JSON shape, with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryError {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}

#[derive(Serialize)]
struct Entry<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

impl RegistryError {
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> RegistryError {
        self.detail = Some(detail);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        let body = Body {
            errors: [Entry {
                code: self.code,
                message: &self.message,
                detail: self.detail.as_ref(),
            }],
        };
        serde_json::to_vec(&body).expect("error body always serialises")
    }

    pub fn bad_gateway(message: impl Into<String>) -> RegistryError {
        RegistryError::new(502, ErrorCode::Unknown, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = RegistryError::new(400, ErrorCode::NameInvalid, "bad name");
        assert_eq!(
            String::from_utf8(e.body()).unwrap(),
            r#"{"errors":[{"code":"NAME_INVALID","message":"bad name"}]}"#
        );
        let d = RegistryError::new(404, ErrorCode::NameUnknown, "x")
            .with_detail(serde_json::json!({"routes": []}));
        assert!(String::from_utf8(d.body())
            .unwrap()
            .contains(r#""detail":{"routes":[]}"#));
    }
}

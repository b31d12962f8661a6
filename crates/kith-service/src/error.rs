//! Typed service errors that survive the trip over gRPC.
//!
//! Every service has one error enum (declared with [`service_error!`]) whose variants each map to a
//! stable reason string and a gRPC code. A server turns an error into a `Status` whose binary
//! details (`grpc-status-details-bin`) are a standard `google.rpc.Status` carrying a
//! `kith.common.v1.ErrorDetail`; a remote client rebuilds the very same variant from it, so local
//! and remote callers see identical errors, and any other gRPC client can read the reason.

use kith_proto::common::v1::ErrorDetail;
use kith_proto::google::rpc::Status as RichStatus;
use prost::Message;
use tonic::{Code, Status};

/// The `Any` type URL of [`ErrorDetail`].
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/kith.common.v1.ErrorDetail";

/// The reason in a status's rich details, if it carries a Kith `ErrorDetail`.
fn error_detail(status: &Status) -> Option<ErrorDetail> {
    let rich = RichStatus::decode(status.details()).ok()?;
    let any = rich
        .details
        .iter()
        .find(|a| a.type_url == ERROR_DETAIL_TYPE_URL)?;
    ErrorDetail::decode(any.value.as_slice()).ok()
}

/// What a service error means to a caller; maps one-to-one onto a subset of gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    FailedPrecondition,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn grpc(self) -> Code {
        match self {
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::PermissionDenied => Code::PermissionDenied,
            ErrorCode::FailedPrecondition => Code::FailedPrecondition,
            ErrorCode::ResourceExhausted => Code::ResourceExhausted,
            ErrorCode::Unauthenticated => Code::Unauthenticated,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Internal => Code::Internal,
        }
    }
}

/// Implemented by every service error enum, normally through [`service_error!`].
pub trait ServiceError: std::error::Error + Send + Sync + Sized + 'static {
    /// The stable reason string of this variant.
    fn reason(&self) -> &'static str;
    fn code(&self) -> ErrorCode;
    fn message(&self) -> &str;
    /// Rebuilds the variant named by `reason`; `None` for a reason this build does not know.
    fn from_reason(reason: &str, message: String) -> Option<Self>;
    /// An error raised by the framework rather than the service (no reason attached).
    fn from_framework(code: ErrorCode, message: String) -> Self;

    /// Encodes this error as a gRPC status carrying its reason.
    fn to_status(&self) -> Status {
        let detail = ErrorDetail {
            reason: self.reason().to_owned(),
            message: self.message().to_owned(),
        };
        let rich = RichStatus {
            code: self.code().grpc() as i32,
            message: self.message().to_owned(),
            details: vec![prost_types::Any {
                type_url: ERROR_DETAIL_TYPE_URL.to_owned(),
                value: detail.encode_to_vec(),
            }],
        };
        Status::with_details(
            self.code().grpc(),
            self.message().to_owned(),
            rich.encode_to_vec().into(),
        )
    }

    /// Decodes a status received from a server into the typed error.
    fn from_status(status: &Status) -> Self {
        if let Some(detail) = error_detail(status)
            && let Some(err) = Self::from_reason(&detail.reason, detail.message)
        {
            return err;
        }
        let code = match status.code() {
            Code::InvalidArgument => ErrorCode::InvalidArgument,
            Code::OutOfRange => ErrorCode::ResourceExhausted,
            Code::NotFound => ErrorCode::NotFound,
            Code::AlreadyExists => ErrorCode::AlreadyExists,
            Code::PermissionDenied => ErrorCode::PermissionDenied,
            Code::FailedPrecondition => ErrorCode::FailedPrecondition,
            Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            Code::Unauthenticated => ErrorCode::Unauthenticated,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        let message = if status.message().is_empty() {
            format!("{:?}", status.code()).to_lowercase()
        } else {
            status.message().to_owned()
        };
        Self::from_framework(code, message)
    }
}

/// Declares a service error enum. Every variant carries a message and names its gRPC code and
/// stable reason. Three framework variants are always added: `Unauthenticated`, `Unavailable`
/// (the service could not be reached) and `Internal`.
///
/// ```
/// kith_service::service_error! {
///     /// Errors of the example service.
///     pub enum ExampleError {
///         /// The input was malformed.
///         BadInput => (InvalidArgument, "bad_input"),
///     }
/// }
/// let err = ExampleError::BadInput("name is empty".into());
/// assert_eq!(err.to_string(), "name is empty");
/// ```
#[macro_export]
macro_rules! service_error {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => ($code:ident, $reason:literal) ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant(String), )*
            /// The caller is not authenticated to the service.
            Unauthenticated(String),
            /// The service could not be reached.
            Unavailable(String),
            /// A fault inside the service.
            Internal(String),
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::ServiceError::message(self))
            }
        }

        impl ::std::error::Error for $name {}

        impl $crate::ServiceError for $name {
            fn reason(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $reason, )*
                    Self::Unauthenticated(_) => "unauthenticated",
                    Self::Unavailable(_) => "unavailable",
                    Self::Internal(_) => "internal",
                }
            }
            fn code(&self) -> $crate::ErrorCode {
                match self {
                    $( Self::$variant(_) => $crate::ErrorCode::$code, )*
                    Self::Unauthenticated(_) => $crate::ErrorCode::Unauthenticated,
                    Self::Unavailable(_) => $crate::ErrorCode::Unavailable,
                    Self::Internal(_) => $crate::ErrorCode::Internal,
                }
            }
            fn message(&self) -> &str {
                match self {
                    $( Self::$variant(m) => m, )*
                    Self::Unauthenticated(m) | Self::Unavailable(m) | Self::Internal(m) => m,
                }
            }
            fn from_reason(reason: &str, message: String) -> Option<Self> {
                Some(match reason {
                    $( $reason => Self::$variant(message), )*
                    "unauthenticated" => Self::Unauthenticated(message),
                    "unavailable" => Self::Unavailable(message),
                    "internal" => Self::Internal(message),
                    _ => return None,
                })
            }
            fn from_framework(code: $crate::ErrorCode, message: String) -> Self {
                match code {
                    $crate::ErrorCode::Unauthenticated => Self::Unauthenticated(message),
                    $crate::ErrorCode::Unavailable => Self::Unavailable(message),
                    $crate::ErrorCode::InvalidArgument => Self::from_reason("invalid_argument", message.clone())
                        .unwrap_or(Self::Internal(message)),
                    $crate::ErrorCode::ResourceExhausted => Self::from_reason("too_large", message.clone())
                        .unwrap_or(Self::Internal(message)),
                    _ => Self::Internal(message),
                }
            }
        }

        impl From<$name> for ::tonic::Status {
            fn from(err: $name) -> ::tonic::Status {
                $crate::ServiceError::to_status(&err)
            }
        }
    };
}

/// `error: source: source…` on one line: an error and its whole chain of causes, for a message
/// that travels (a gRPC status, a log line).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    service_error! {
        /// Test errors.
        pub enum TestError {
            /// Bad.
            Bad => (InvalidArgument, "invalid_argument"),
            /// Missing.
            Missing => (NotFound, "missing"),
        }
    }

    #[test]
    fn round_trips_through_status() {
        for err in [
            TestError::Bad("x is bad".into()),
            TestError::Missing("no such thing".into()),
            TestError::Unauthenticated("no token".into()),
            TestError::Internal("boom".into()),
        ] {
            let status = err.to_status();
            assert_eq!(status.code(), err.code().grpc());
            assert_eq!(TestError::from_status(&status), err);
        }
    }

    #[test]
    fn details_are_a_standard_rich_status() {
        let status = TestError::Missing("no such thing".into()).to_status();
        let rich = RichStatus::decode(status.details()).unwrap();
        assert_eq!(rich.code, Code::NotFound as i32);
        assert_eq!(rich.message, "no such thing");
        assert_eq!(rich.details[0].type_url, ERROR_DETAIL_TYPE_URL);
        let detail = ErrorDetail::decode(rich.details[0].value.as_slice()).unwrap();
        assert_eq!(detail.reason, "missing");
    }

    #[test]
    fn status_without_details_maps_by_code() {
        let status = Status::unavailable("connection refused");
        assert_eq!(
            TestError::from_status(&status),
            TestError::Unavailable("connection refused".into())
        );
        let status = Status::invalid_argument("decode error");
        assert_eq!(
            TestError::from_status(&status),
            TestError::Bad("decode error".into())
        );
        let status = Status::data_loss("weird");
        assert_eq!(
            TestError::from_status(&status),
            TestError::Internal("weird".into())
        );
    }
}

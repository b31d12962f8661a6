//! Architectural invariants of the identity API, checked against the compiled protos.

use prost::Message;
use prost_types::FileDescriptorSet;

/// Identity and device secrets never leave the identity service: the only secret-bearing field in
/// any Kith API is the delegated scoped key.
#[test]
fn no_rpc_carries_identity_or_device_secrets() {
    let set = FileDescriptorSet::decode(kith_proto::FILE_DESCRIPTOR_SET).unwrap();
    let suspicious = [
        "secret",
        "private",
        "mnemonic",
        "seed",
        "entropy",
        "passphrase",
    ];
    let mut found = Vec::new();
    for file in &set.file {
        for message in &file.message_type {
            for field in &message.field {
                use prost_types::field_descriptor_proto::Type;
                let carries_data = matches!(field.r#type(), Type::Bytes | Type::String);
                let name = field.name();
                if carries_data && suspicious.iter().any(|s| name.contains(s)) {
                    found.push(format!("{}.{}.{}", file.package(), message.name(), name));
                }
            }
        }
    }
    assert_eq!(
        found,
        ["kith.identity.v1.DelegateResponse.scoped_secret_key"]
    );
}

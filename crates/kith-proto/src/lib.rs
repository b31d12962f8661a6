//! Wire types for every Kith service, generated from `proto/`. This crate does nothing else:
//! services convert these into their own validated domain types on receipt.

/// Encoded `FileDescriptorSet` of every Kith proto, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kith_descriptor.bin"));

/// The standard gRPC rich error model, carried in `grpc-status-details-bin`.
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod common {
    pub mod v1 {
        tonic::include_proto!("kith.common.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("kith.identity.v1");
    }
}

pub mod transport {
    pub mod v1 {
        tonic::include_proto!("kith.transport.v1");
    }
}

pub mod store {
    pub mod v1 {
        tonic::include_proto!("kith.store.v1");
    }
}

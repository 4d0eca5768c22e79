//! The wire contracts of minicloud: every `.proto` of `proto/` compiled with tonic-prost,
//! and the closed error-code enum that both REST and gRPC answers are built from.

pub mod error;
pub mod openapi;
pub mod services;

pub use prost;
pub use tonic;

/// `grpc.health.v1`: the standard health protocol, served by every service.
pub mod health {
    #[allow(clippy::clone_on_ref_ptr, clippy::doc_markdown)]
    pub mod v1 {
        tonic::include_proto!("grpc.health.v1");
    }
}

pub mod auth {
    #[allow(clippy::clone_on_ref_ptr, clippy::doc_markdown)]
    pub mod v1 {
        tonic::include_proto!("minicloud.auth.v1");
    }
}

pub mod storage {
    #[allow(clippy::clone_on_ref_ptr, clippy::doc_markdown)]
    pub mod v1 {
        tonic::include_proto!("minicloud.storage.v1");
    }
}

pub mod docdb {
    #[allow(clippy::clone_on_ref_ptr, clippy::doc_markdown)]
    pub mod v1 {
        tonic::include_proto!("minicloud.docdb.v1");
    }
}

pub mod bus {
    #[allow(clippy::clone_on_ref_ptr, clippy::doc_markdown)]
    pub mod v1 {
        tonic::include_proto!("minicloud.bus.v1");
    }
}

pub mod invoker {
    #[allow(clippy::clone_on_ref_ptr, clippy::doc_markdown)]
    pub mod v1 {
        tonic::include_proto!("minicloud.invoker.v1");
    }
}

pub mod billing {
    #[allow(clippy::clone_on_ref_ptr, clippy::doc_markdown)]
    pub mod v1 {
        tonic::include_proto!("minicloud.billing.v1");
    }
}

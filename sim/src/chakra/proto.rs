//! The messages of Chakra's execution-trace schema that the export writes, with hand-written
//! `prost` derives (no protoc, no build script).
//!
//! Field numbers and types are those of `schema/protobuf/et_def.proto` in the public
//! mlcommons/chakra repository, read at commit 6dc63e147b9d115286626cc122459e44d9d08401
//! (package `ChakraProtoMsg`, proto3). Only the members used here are declared: a decoder
//! skips the others as unknown fields, and fields left out here are absent from what is
//! written. `AttributeProto.value` declares the oneof members the export and its readers use;
//! `Node.storage` (11) and the storage messages are left out.

/// `GlobalMetadata`: the first message of every trace file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GlobalMetadata {
    /// Schema version (field 1).
    #[prost(string, tag = "1")]
    pub version: String,
    /// Attributes (field 2).
    #[prost(message, repeated, tag = "2")]
    pub attr: Vec<AttributeProto>,
}

/// `AttributeProto`: a named value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Name (field 1).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Description (field 2).
    #[prost(string, tag = "2")]
    pub doc_string: String,
    /// The value (the oneof `value`).
    #[prost(oneof = "Value", tags = "3, 7, 9, 10, 11, 13, 27, 29")]
    pub value: Option<Value>,
}

/// Members of `AttributeProto`'s oneof `value` (those this crate writes or reads).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// `double double_val = 3`.
    #[prost(double, tag = "3")]
    DoubleVal(f64),
    /// `int32 int32_val = 7`.
    #[prost(int32, tag = "7")]
    Int32Val(i32),
    /// `int64 int64_val = 9`.
    #[prost(int64, tag = "9")]
    Int64Val(i64),
    /// `Int64List int64_list = 10`.
    #[prost(message, tag = "10")]
    Int64List(Int64List),
    /// `uint32 uint32_val = 11`.
    #[prost(uint32, tag = "11")]
    Uint32Val(u32),
    /// `uint64 uint64_val = 13`.
    #[prost(uint64, tag = "13")]
    Uint64Val(u64),
    /// `bool bool_val = 27`.
    #[prost(bool, tag = "27")]
    BoolVal(bool),
    /// `string string_val = 29`.
    #[prost(string, tag = "29")]
    StringVal(String),
}

/// `Int64List`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Int64List {
    /// Values (field 1, packed).
    #[prost(int64, repeated, tag = "1")]
    pub values: Vec<i64>,
}

/// `IOInfo`: a node's inputs or outputs as text.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IoInfo {
    /// Values (field 1).
    #[prost(string, tag = "1")]
    pub values: String,
    /// Shapes (field 2).
    #[prost(string, tag = "2")]
    pub shapes: String,
    /// Types (field 3).
    #[prost(string, tag = "3")]
    pub types: String,
}

/// `NodeType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum NodeType {
    /// `INVALID_NODE`.
    InvalidNode = 0,
    /// `METADATA_NODE`.
    MetadataNode = 1,
    /// `MEM_LOAD_NODE`.
    MemLoadNode = 2,
    /// `MEM_STORE_NODE`.
    MemStoreNode = 3,
    /// `COMP_NODE`.
    CompNode = 4,
    /// `COMM_SEND_NODE`.
    CommSendNode = 5,
    /// `COMM_RECV_NODE`.
    CommRecvNode = 6,
    /// `COMM_COLL_NODE`.
    CommCollNode = 7,
    /// `STORAGE_NODE`.
    StorageNode = 8,
    /// `BATCH_NODE`.
    BatchNode = 9,
    /// `CHECKPOINT_NODE`.
    CheckpointNode = 10,
}

/// `CollectiveCommType` (the `comm_type` attribute of a `COMM_COLL_NODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum CollectiveCommType {
    /// `ALL_REDUCE`.
    AllReduce = 0,
    /// `REDUCE`.
    Reduce = 1,
    /// `ALL_GATHER`.
    AllGather = 2,
    /// `GATHER`.
    Gather = 3,
    /// `SCATTER`.
    Scatter = 4,
    /// `BROADCAST`.
    Broadcast = 5,
    /// `ALL_TO_ALL`.
    AllToAll = 6,
    /// `REDUCE_SCATTER`.
    ReduceScatter = 7,
    /// `REDUCE_SCATTER_BLOCK`.
    ReduceScatterBlock = 8,
    /// `BARRIER`.
    Barrier = 9,
}

/// `Node`: one operation of a rank.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Node {
    /// Id, unique in its file (field 1).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Name (field 2).
    #[prost(string, tag = "2")]
    pub name: String,
    /// `NodeType` (field 3).
    #[prost(enumeration = "NodeType", tag = "3")]
    pub r#type: i32,
    /// Control dependencies (field 4, packed).
    #[prost(uint64, repeated, tag = "4")]
    pub ctrl_deps: Vec<u64>,
    /// Data dependencies (field 5, packed).
    #[prost(uint64, repeated, tag = "5")]
    pub data_deps: Vec<u64>,
    /// Start time in µs (field 6).
    #[prost(uint64, tag = "6")]
    pub start_time_micros: u64,
    /// Duration in µs (field 7).
    #[prost(uint64, tag = "7")]
    pub duration_micros: u64,
    /// Inputs (field 8).
    #[prost(message, optional, tag = "8")]
    pub inputs: Option<IoInfo>,
    /// Outputs (field 9).
    #[prost(message, optional, tag = "9")]
    pub outputs: Option<IoInfo>,
    /// Attributes (field 10).
    #[prost(message, repeated, tag = "10")]
    pub attr: Vec<AttributeProto>,
}

impl AttributeProto {
    /// An attribute named `name` holding `value`.
    pub fn new(name: &str, value: Value) -> AttributeProto {
        AttributeProto {
            name: name.to_string(),
            doc_string: String::new(),
            value: Some(value),
        }
    }
}

impl Node {
    /// The attribute named `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.attr
            .iter()
            .find(|a| a.name == name)
            .and_then(|a| a.value.as_ref())
    }
}

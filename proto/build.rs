//! Compiles `proto/partyline/v1/*.proto` into OUT_DIR with the pure-Rust
//! `protox` compiler, so a fresh machine builds without a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/partyline/v1/room.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".partyline.v1")
        .codec_path("crate::codec::RoomCodec")
        .compile_fds(descriptors)?;
    Ok(())
}

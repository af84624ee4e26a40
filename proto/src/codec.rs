//! The gRPC codec of the room contract: prost encoding with small buffers.
//!
//! tonic's default codec reserves an 8 KiB encode and decode buffer per
//! stream direction on each side, about 24 KiB per (gateway, room) stream.
//! Room streams carry mostly small y-sync frames and there is one per live
//! room per gateway, so the buffers start at 1 KiB and grow only for the
//! frames that need it.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer per stream direction.
const BUFFER_BYTES: usize = 1024;
/// tonic's default: how much an encoder produces before yielding.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost codec with [`BUFFER_BYTES`] buffers; named by the generated code.
#[derive(Debug, Clone, Copy)]
pub struct RoomCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RoomCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for RoomCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
    }
}

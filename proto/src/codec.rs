//! The gRPC codec of every generated Cohortex client and server: prost, plus two refusals.
//!
//! **Undecodable bytes are `INVALID_ARGUMENT`.** `tonic_prost::ProstCodec` maps a prost decode
//! error to `INTERNAL`, which tells a caller (and an operator reading the logs) that the server
//! failed, when it was the message that was wrong.
//!
//! **Only canonical encodings are accepted.** A message is accepted only when re-encoding what
//! prost decoded gives back exactly the received bytes. Protobuf lets one message have many
//! encodings (fields in any order, a field repeated with the last value winning, unknown fields
//! skipped, defaults written out, varints padded), and prost decodes them all to the same value.
//! Request signatures (`market::server::auth`) sign the prost encoding of the decoded message;
//! with this check that encoding *is* the received bytes, so a signature covers every byte the
//! server read and no one can smuggle extra bytes past it. Cohortex messages have no maps
//! (whose order prost does not fix) and no oneofs, so prost's encoding is a function of the
//! value, and every other conforming encoder writes the same bytes (fields in field-number
//! order, defaults omitted, repeated scalars packed).
//!
//! The codec cannot tell a client's decoder from a server's, so a client that receives a
//! malformed answer sees the same `INVALID_ARGUMENT`. Neither refusal echoes the received
//! bytes.

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A [`Codec`] encoding `E` and decoding `D` with prost, refusing non-canonical input (see the
/// module documentation). Generated code creates it with `default()`.
#[derive(Debug)]
pub struct CanonicalProstCodec<E, D> {
    /// The codec holds no value of either type.
    types: PhantomData<fn(E) -> D>,
}

impl<E, D> Default for CanonicalProstCodec<E, D> {
    fn default() -> Self {
        CanonicalProstCodec { types: PhantomData }
    }
}

impl<E, D> Clone for CanonicalProstCodec<E, D> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<E, D> Codec for CanonicalProstCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = ProstEncoder<E>;
    type Decoder = CanonicalProstDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder {
            message: PhantomData,
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        CanonicalProstDecoder {
            message: PhantomData,
        }
    }
}

/// Writes a message's prost encoding.
#[derive(Debug)]
pub struct ProstEncoder<E> {
    message: PhantomData<fn(E)>,
}

impl<E: Message> Encoder for ProstEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows as needed, so prost's only error (too little room) cannot happen.
        item.encode(buf)
            .map_err(|_| Status::internal("message encoding ran out of buffer space"))
    }
}

/// Reads a message that must be the canonical prost encoding of its value.
#[derive(Debug)]
pub struct CanonicalProstDecoder<D> {
    message: PhantomData<fn() -> D>,
}

impl<D: Message + Default> Decoder for CanonicalProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let received = buf.copy_to_bytes(buf.remaining());
        decode_canonical(&received).map(Some)
    }
}

/// Decodes `received` as a `D` whose prost encoding is exactly `received`; anything else is
/// `INVALID_ARGUMENT` with a message that names no received byte.
pub fn decode_canonical<D: Message + Default>(received: &[u8]) -> Result<D, Status> {
    let message = D::decode(received).map_err(|error| {
        Status::invalid_argument(format!("message is not a valid protobuf encoding: {error}"))
    })?;
    let canonical =
        message.encoded_len() == received.len() && message.encode_to_vec().as_slice() == received;
    if !canonical {
        return Err(Status::invalid_argument(
            "message is not in canonical protobuf encoding (unknown, repeated or out-of-order \
             fields); re-encode it with a conforming encoder",
        ));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;
    use tonic::Code;

    fn block_request(height: u64) -> Vec<u8> {
        v1::GetBlockRequest { height }.encode_to_vec()
    }

    #[test]
    fn canonical_encoding_decodes_to_its_message() {
        let decoded = decode_canonical::<v1::GetBlockRequest>(&block_request(7)).ok();
        assert_eq!(decoded, Some(v1::GetBlockRequest { height: 7 }));
        let empty = decode_canonical::<v1::GetBlockRequest>(&[]).ok();
        assert_eq!(empty, Some(v1::GetBlockRequest { height: 0 }));
    }

    #[test]
    fn undecodable_bytes_are_invalid_argument() {
        let refused = decode_canonical::<v1::GetBlockRequest>(&[0xff, 0xff, 0xff]).err();
        assert_eq!(refused.map(|s| s.code()), Some(Code::InvalidArgument));
    }

    #[test]
    fn encodings_prost_would_not_write_are_invalid_argument() {
        // Field 1 (height) twice: prost keeps the last value.
        let repeated = [block_request(7), block_request(9)].concat();
        // An unknown field 15, varint 1: prost skips it.
        let unknown = [block_request(7), vec![15 << 3, 1]].concat();
        // The default value written out: prost omits it.
        let explicit_default = vec![1 << 3, 0];
        // 7 as a two-byte varint.
        let padded_varint = vec![1 << 3, 0x87, 0x00];
        for bytes in [repeated, unknown, explicit_default, padded_varint] {
            let refused = decode_canonical::<v1::GetBlockRequest>(&bytes).err();
            assert_eq!(
                refused.as_ref().map(Status::code),
                Some(Code::InvalidArgument),
                "{bytes:?}"
            );
            assert!(refused.is_some_and(|s| s.message().contains("canonical")));
        }
    }
}

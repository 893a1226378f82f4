//! The tch edge of packing: tensors in, tensors out.
use tch::{Kind, Tensor};

use super::{DecodeError, DecodeLimits, Header, PackError, PackOptions, Packer, TensorId};

/// Copies a tensor's values out as contiguous fp32, with its shape.
pub fn tensor_values(t: &Tensor) -> Result<(Vec<f32>, Vec<usize>), PackError> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let flat = t.to_kind(Kind::Float).contiguous().flatten(0, -1);
    let values = Vec::<f32>::try_from(&flat).map_err(|e| PackError::Shape(e.to_string()))?;
    Ok((values, shape))
}

/// Packs a tensor (any float kind; batch first).
pub fn pack_tensor(
    packer: &mut Packer,
    t: &Tensor,
    id: &TensorId,
    opts: &PackOptions,
) -> Result<Vec<u8>, PackError> {
    let (values, shape) = tensor_values(t)?;
    let mut out = Vec::new();
    packer.pack_into(&values, &shape, id, opts, &mut out)?;
    Ok(out)
}

/// Unpacks into an fp32 tensor of the header's shape.
pub fn unpack_tensor(
    packer: &mut Packer,
    buf: &[u8],
    limits: &DecodeLimits,
) -> Result<(Header, Tensor), DecodeError> {
    let u = packer.unpack(buf, limits)?;
    let dims: Vec<i64> = u.header.shape.iter().map(|&d| i64::from(d)).collect();
    let t = Tensor::from_slice(&u.values).view(dims.as_slice());
    Ok((u.header, t))
}

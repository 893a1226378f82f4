//! The packed tensor format: round trips, and every kind of bad buffer.
use dyno::pack::{
    pack, unpack, Clip, Codec, DecodeError, DecodeLimits, Granularity, Header, PackError,
    PackOptions, Precision, Range, TensorId,
};
use proptest::prelude::*;

const ID: TensorId<'static> = TensorId {
    model: "mobilenet_v2",
    weights_hash: 0x0123_4567_89ab_cdef,
    split: 7,
};

fn opts(precision: Precision, codec: Codec, granularity: Granularity) -> PackOptions {
    PackOptions {
        granularity,
        ..PackOptions::new(precision, codec)
    }
}

/// A ReLU-like activation: a third zeros, the rest spread over [0, 6).
fn activation(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                0.0
            } else {
                ((i * 7919) % 1000) as f32 * 0.006
            }
        })
        .collect()
}

fn valid_buffer() -> Vec<u8> {
    pack(
        &activation(2 * 4 * 5 * 5),
        &[2, 4, 5, 5],
        &ID,
        &opts(Precision::Bits(6), Codec::Lz4, Granularity::PerTensor),
    )
    .unwrap()
}

fn precision_strategy() -> impl Strategy<Value = Precision> {
    prop_oneof![
        (1u8..=16).prop_map(Precision::Bits),
        Just(Precision::Fp16),
        Just(Precision::Fp32)
    ]
}

fn codec_strategy() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::None), Just(Codec::Lz4), Just(Codec::Zstd)]
}

proptest! {
    #[test]
    fn every_precision_and_codec_round_trips_within_half_a_step(
        precision in precision_strategy(),
        codec in codec_strategy(),
        per_channel in any::<bool>(),
        (shape, values) in (1usize..3, 1usize..5, 1usize..20).prop_flat_map(|(b, c, hw)| {
            (Just(vec![b, c, hw]), proptest::collection::vec(-300f32..300.0, b * c * hw))
        }),
        relu in any::<bool>(),
        clip in prop_oneof![Just(Clip::MinMax), Just(Clip::Mse)],
    ) {
        let values: Vec<f32> = if relu { values.iter().map(|v| v.max(0.0)).collect() } else { values };
        let g = if per_channel { Granularity::PerChannel } else { Granularity::PerTensor };
        let o = PackOptions { clip, ..opts(precision, codec, g) };
        let buf = pack(&values, &shape, &ID, &o).unwrap();
        let u = unpack(&buf, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(u.header.shape.iter().map(|&d| d as usize).collect::<Vec<_>>(), shape.clone());
        prop_assert_eq!((u.header.split, u.header.model.as_str(), u.header.weights_hash), (7, "mobilenet_v2", ID.weights_hash));
        let channels = shape[1];
        let inner = shape[2];
        for (i, (v, b)) in values.iter().zip(&u.values).enumerate() {
            // A clipped range brings a value beyond it back as the range's end.
            let (v, tol) = match precision {
                Precision::Bits(bits) => {
                    let r = if u.header.ranges.len() == 1 { u.header.ranges[0] } else { u.header.ranges[(i / inner) % channels] };
                    if clip == Clip::MinMax {
                        prop_assert!(r.min <= *v && *v <= r.max, "element {} = {} outside {:?}", i, v, r);
                    }
                    (v.clamp(r.min, r.max), r.step(u32::from(bits)) / 2.0 + 8.0 * f32::EPSILON * r.min.abs().max(r.max.abs()))
                }
                Precision::Fp16 => (*v, v.abs() / 1024.0 + 1e-7),
                Precision::Fp32 => (*v, 0.0),
                Precision::Jpeg(_) => unreachable!("the strategy makes no JPEG"),
            };
            prop_assert!((v - b).abs() <= tol, "element {}: {} -> {} (tol {})", i, v, b, tol);
            if v == 0.0 && relu {
                prop_assert_eq!(*b, 0.0, "zero at {} did not survive", i);
            }
        }
    }

    #[test]
    fn any_byte_string_decodes_to_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = unpack(&bytes, &DecodeLimits::default());
    }

    #[test]
    fn any_corruption_of_a_valid_buffer_is_caught(pos in 0usize..10_000, flip in 1u8..=255) {
        let mut buf = valid_buffer();
        let pos = pos % buf.len();
        buf[pos] ^= flip;
        prop_assert!(unpack(&buf, &DecodeLimits::default()).is_err(), "flip at {} accepted", pos);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let buf = valid_buffer();
    for len in 0..buf.len() {
        let err = unpack(&buf[..len], &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated { .. } | DecodeError::Inconsistent(_)
            ),
            "prefix of {len}: {err}"
        );
    }
    assert!(unpack(&buf, &DecodeLimits::default()).is_ok());
    let mut longer = buf.clone();
    longer.push(0);
    assert!(matches!(
        unpack(&longer, &DecodeLimits::default()),
        Err(DecodeError::Inconsistent(_))
    ));
}

#[test]
fn unknown_versions_and_codecs_are_named() {
    let buf = valid_buffer();
    let mut v = buf.clone();
    v[4] = 9;
    assert_eq!(
        unpack(&v, &DecodeLimits::default()),
        Err(DecodeError::UnknownVersion(9))
    );
    let mut c = buf.clone();
    c[5] = 7;
    assert_eq!(
        unpack(&c, &DecodeLimits::default()),
        Err(DecodeError::UnknownCodec(7))
    );
    let mut m = buf.clone();
    m[0] = b'X';
    assert_eq!(
        unpack(&m, &DecodeLimits::default()),
        Err(DecodeError::BadMagic)
    );
    let mut p = buf;
    p[7] = 17;
    assert_eq!(
        unpack(&p, &DecodeLimits::default()),
        Err(DecodeError::BadPrecision { kind: 0, bits: 17 })
    );
}

#[test]
fn corrupted_payload_and_header_fail_their_checksums() {
    let buf = valid_buffer();
    let mut body = buf.clone();
    let last = body.len() - 1;
    body[last] ^= 0x40;
    assert_eq!(
        unpack(&body, &DecodeLimits::default()),
        Err(DecodeError::PayloadChecksum)
    );
    // A range value (after magic, fixed fields, the model id, 4 dims, range count).
    let range_at = 21 + ID.model.len() + 4 * 4 + 4;
    let mut head = buf;
    head[range_at + 5] ^= 0x01;
    assert_eq!(
        unpack(&head, &DecodeLimits::default()),
        Err(DecodeError::HeaderChecksum)
    );
}

/// A header that claims a huge tensor, with a correct header checksum.
fn forged(shape: Vec<u32>, ranges: Vec<Range>, payload_len: u32) -> Vec<u8> {
    let h = Header {
        codec: Codec::None,
        precision: Precision::Bits(8),
        granularity: Granularity::PerTensor,
        model: "m".into(),
        weights_hash: 0,
        split: 0,
        shape,
        ranges,
        payload_len,
        payload_crc: crc32fast::hash(&[]),
    };
    let mut out = Vec::new();
    h.encode(&mut out);
    out
}

#[test]
fn oversized_tensors_are_refused_before_allocation() {
    let r = vec![Range { min: 0.0, max: 1.0 }];
    let huge = forged(vec![u32::MAX, u32::MAX, 16], r.clone(), 0);
    let err = unpack(&huge, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    let limits = DecodeLimits { max_elements: 1000 };
    let err = unpack(&forged(vec![1, 1001], r.clone(), 0), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLarge {
                elements: 1001,
                limit: 1000
            }
        ),
        "{err}"
    );
    // Inconsistent: a header that promises no payload for 10 elements.
    let err = unpack(&forged(vec![10], r, 0), &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Inconsistent(_) | DecodeError::PayloadChecksum
        ),
        "{err}"
    );
    // A range that is not a range.
    for bad in [(2.0, 1.0), (-3e38, 3e38), (f32::NAN, 1.0)] {
        let r = vec![Range {
            min: bad.0,
            max: bad.1,
        }];
        let err = unpack(&forged(vec![10], r, 0), &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, DecodeError::BadRange { index: 0, .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn nan_and_inf_are_refused_with_their_position() {
    let mut v = activation(2 * 3 * 4);
    v[17] = f32::NAN;
    for precision in [Precision::Bits(8), Precision::Fp16, Precision::Fp32] {
        let err = pack(
            &v,
            &[2, 3, 4],
            &ID,
            &opts(precision, Codec::Lz4, Granularity::PerTensor),
        )
        .unwrap_err();
        assert!(
            matches!(&err, PackError::NonFinite { index: 17, position, value } if position == &[1, 1, 1] && value.is_nan()),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("element 17 (index [1, 1, 1])"),
            "{err}"
        );
    }
    v[17] = 1.0;
    v[3] = f32::INFINITY;
    let err = pack(
        &v,
        &[2, 3, 4],
        &ID,
        &opts(Precision::Bits(4), Codec::None, Granularity::PerChannel),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("element 3 (index [0, 0, 3]) is inf"),
        "{err}"
    );
    v[3] = 3e38;
    v[4] = -3e38;
    let err = pack(
        &v,
        &[2, 3, 4],
        &ID,
        &opts(Precision::Bits(8), Codec::None, Granularity::PerTensor),
    )
    .unwrap_err();
    assert!(matches!(err, PackError::RangeOverflow { .. }), "{err}");
    v[4] = 0.0;
    v[3] = 1e6;
    let err = pack(
        &v,
        &[2, 3, 4],
        &ID,
        &opts(Precision::Fp16, Codec::None, Granularity::PerTensor),
    )
    .unwrap_err();
    assert!(
        matches!(err, PackError::Fp16Overflow { index: 3, .. }),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_refused() {
    let v = activation(12);
    assert_eq!("0".parse::<Precision>(), Err(PackError::BadBits(0)));
    assert_eq!("17".parse::<Precision>(), Err(PackError::BadBits(17)));
    assert!(matches!(
        "fp8".parse::<Precision>(),
        Err(PackError::BadPrecision(_))
    ));
    let o = opts(Precision::Bits(8), Codec::None, Granularity::PerTensor);
    assert!(matches!(
        pack(&v, &[5, 2], &ID, &o),
        Err(PackError::Shape(_))
    ));
    assert!(matches!(
        pack(&v, &[12, 0], &ID, &o),
        Err(PackError::Shape(_))
    ));
    let long = "x".repeat(65);
    let id = TensorId { model: &long, ..ID };
    assert!(matches!(
        pack(&v, &[12], &id, &o),
        Err(PackError::ModelId(_))
    ));
}

#[test]
fn packing_shrinks_relu_activations() {
    let v = activation(64 * 28 * 28);
    let fp32 = 4 * v.len();
    let size = |p, c| {
        pack(
            &v,
            &[1, 64, 28, 28],
            &ID,
            &opts(p, c, Granularity::PerTensor),
        )
        .unwrap()
        .len()
    };
    let s8 = size(Precision::Bits(8), Codec::None);
    assert!(s8 < fp32 / 4 + 200, "8 bits uncompressed: {s8}");
    assert!(
        size(Precision::Bits(2), Codec::Zstd) < fp32 / 16,
        "2 bits + zstd"
    );
    assert!(size(Precision::Bits(8), Codec::Lz4) <= s8 + 64);
}

#[test]
fn tensors_round_trip_through_the_tch_edge() {
    use dyno::pack::tensor::{pack_tensor, unpack_tensor};
    use dyno::pack::Packer;
    use tch::{Kind, Tensor};
    let t = (Tensor::arange(2 * 3 * 4 * 5, (Kind::Float, tch::Device::Cpu)) * 0.1)
        .relu()
        .view([2, 3, 4, 5]);
    let mut packer = Packer::default();
    let o = opts(Precision::Bits(8), Codec::Zstd, Granularity::PerTensor);
    let buf = pack_tensor(&mut packer, &t, &ID, &o).unwrap();
    let (header, back) = unpack_tensor(&mut packer, &buf, &DecodeLimits::default()).unwrap();
    assert_eq!(back.size(), [2, 3, 4, 5]);
    assert_eq!(header.shape, [2, 3, 4, 5]);
    let step = header.ranges[0].step(8);
    let err = (&back - &t).abs().max().double_value(&[]);
    assert!(
        err <= f64::from(step) / 2.0 + 1e-5,
        "error {err}, step {step}"
    );
    // fp64 input is converted; a NaN inside is still refused with its index.
    let v = t.to_kind(Kind::Double);
    let _ = v.get(1).get(2).get(3).get(4).fill_(f64::NAN);
    let err = pack_tensor(&mut packer, &v, &ID, &o).unwrap_err();
    assert!(err.to_string().contains("index [1, 2, 3, 4]"), "{err}");
}

/// A smooth picture-like input: `[items, channels, h, w]` in roughly [-2, 2.5].
fn picture(items: usize, channels: usize, h: usize, w: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(items * channels * h * w);
    for i in 0..items {
        for c in 0..channels {
            for y in 0..h {
                for x in 0..w {
                    let t = (x as f32 / w as f32) + 0.5 * (y as f32 / h as f32);
                    v.push(-2.0 + 3.0 * t + 0.3 * c as f32 + 0.1 * i as f32);
                }
            }
        }
    }
    v
}

#[test]
fn a_picture_sent_as_jpeg_comes_back_close_and_smaller_at_lower_quality() {
    for channels in [1, 3] {
        let shape = [2, channels, 32, 48];
        let values = picture(2, channels, 32, 48);
        let mut last = usize::MAX;
        for q in [95, 75, 50] {
            let buf = pack(
                &values,
                &shape,
                &ID,
                &opts(Precision::Jpeg(q), Codec::None, Granularity::PerTensor),
            )
            .unwrap();
            assert!(
                buf.len() < last,
                "quality {q}: {} bytes, not fewer than {last}",
                buf.len()
            );
            last = buf.len();
            let u = unpack(&buf, &DecodeLimits::default()).unwrap();
            assert_eq!(u.header.precision, Precision::Jpeg(q));
            assert_eq!(u.header.granularity, Granularity::PerChannel);
            assert_eq!(u.header.ranges.len(), channels);
            assert_eq!(u.header.shape, vec![2, channels as u32, 32, 48]);
            let mean_err: f32 = values
                .iter()
                .zip(&u.values)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / values.len() as f32;
            // One 8-bit step of a range of about 4 is 0.016.
            assert!(
                mean_err < 0.05,
                "{channels} channel(s), quality {q}: mean error {mean_err}"
            );
        }
        // Far fewer bytes than the values in fp32, even with two JPEG headers this small.
        assert!(last * 5 < 4 * values.len(), "{last} bytes");
    }
}

#[test]
fn a_jpeg_is_refused_where_it_cannot_hold_the_tensor() {
    let o = |q| opts(Precision::Jpeg(q), Codec::None, Granularity::PerTensor);
    // Not a picture: 4 channels, or not 4 dimensions.
    for shape in [vec![1, 4, 8, 8], vec![3, 64]] {
        let n: usize = shape.iter().product();
        let err = pack(&picture(1, 1, 1, n), &shape, &ID, &o(90)).unwrap_err();
        assert!(matches!(err, PackError::Jpeg(_)), "{shape:?}: {err}");
        assert!(err.to_string().contains("not a picture"), "{err}");
    }
    // With a codec: a JPEG is already compressed.
    let err = pack(
        &picture(1, 3, 8, 8),
        &[1, 3, 8, 8],
        &ID,
        &opts(Precision::Jpeg(90), Codec::Zstd, Granularity::PerTensor),
    )
    .unwrap_err();
    assert!(err.to_string().contains("codec none"), "{err}");
    // Quality 0, and a NaN pixel.
    assert!(matches!(
        pack(&picture(1, 3, 8, 8), &[1, 3, 8, 8], &ID, &o(0)),
        Err(PackError::BadPrecision(_))
    ));
    let mut nan = picture(1, 3, 8, 8);
    nan[70] = f32::NAN;
    assert!(matches!(
        pack(&nan, &[1, 3, 8, 8], &ID, &o(90)),
        Err(PackError::NonFinite { index: 70, .. })
    ));
    assert_eq!("jpeg95".parse::<Precision>().unwrap(), Precision::Jpeg(95));
    assert!("jpeg101".parse::<Precision>().is_err());
}

#[test]
fn a_jpeg_of_another_size_than_its_header_says_is_refused_before_it_is_decoded() {
    let buf = pack(
        &picture(1, 3, 16, 16),
        &[1, 3, 16, 16],
        &ID,
        &opts(Precision::Jpeg(90), Codec::None, Granularity::PerTensor),
    )
    .unwrap();
    let (mut header, len) = Header::decode(&buf, 1 << 26).unwrap();
    header.shape = vec![1, 3, 32, 32];
    let mut forged = Vec::new();
    header.encode(&mut forged);
    forged.extend_from_slice(&buf[len..]);
    let err = unpack(&forged, &DecodeLimits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("16x16") && err.contains("32x32"), "{err}");
    // A payload cut short, with its checksum mended: refused, not a panic.
    let payload = &buf[len..buf.len() - 10];
    let (mut header, _) = Header::decode(&buf, 1 << 26).unwrap();
    header.payload_len = payload.len() as u32;
    header.payload_crc = crc32fast::hash(payload);
    let mut cut = Vec::new();
    header.encode(&mut cut);
    cut.extend_from_slice(payload);
    let err = unpack(&cut, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Inconsistent(_)), "{err}");
    // A JPEG with a codec other than none, or 2 channels: the header is refused.
    for (codec, channels) in [(Codec::Lz4, 3), (Codec::None, 2)] {
        let (mut header, _) = Header::decode(&buf, 1 << 26).unwrap();
        header.codec = codec;
        header.shape[1] = channels;
        header.ranges.truncate(channels as usize);
        let mut h = Vec::new();
        header.encode(&mut h);
        let err = Header::decode(&h, 1 << 26).unwrap_err().to_string();
        assert!(err.contains("codec none"), "{err}");
    }
}

/// The unpack fuzzer's seeds (`fuzz/seeds/unpack/`, given by scripts/fuzz.sh): one
/// buffer of each kind, so that the fuzzer starts past the header, into every decoder
/// (the JPEG one included). The files are the format's golden copies: a change to the
/// format shows here. `DYNO_WRITE_SEEDS=1` writes them anew.
#[test]
fn the_fuzzers_seeds_are_packed_buffers_of_every_kind() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/unpack");
    let kinds = [
        (
            "bits6-lz4",
            Precision::Bits(6),
            Codec::Lz4,
            Granularity::PerTensor,
        ),
        (
            "bits3-zstd-per-channel",
            Precision::Bits(3),
            Codec::Zstd,
            Granularity::PerChannel,
        ),
        (
            "fp16-none",
            Precision::Fp16,
            Codec::None,
            Granularity::PerTensor,
        ),
        (
            "fp32-zstd",
            Precision::Fp32,
            Codec::Zstd,
            Granularity::PerTensor,
        ),
        (
            "jpeg75",
            Precision::Jpeg(75),
            Codec::None,
            Granularity::PerTensor,
        ),
    ];
    for (name, precision, codec, g) in kinds {
        let buf = pack(
            &picture(1, 3, 8, 8),
            &[1, 3, 8, 8],
            &ID,
            &opts(precision, codec, g),
        )
        .unwrap();
        let path = dir.join(format!("{name}.dynp"));
        if std::env::var_os("DYNO_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &buf).unwrap();
        }
        let seed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; write it with DYNO_WRITE_SEEDS=1", path.display())
        });
        assert_eq!(
            seed, buf,
            "{name}: the packed format changed; write the seeds anew"
        );
        assert_eq!(
            unpack(&seed, &DecodeLimits::default())
                .unwrap()
                .header
                .precision,
            precision
        );
    }
}

//! The bound on what a layer unpacks to: a gzip "bomb" (a few MiB that decompress to
//! terabytes) must be refused before containerd writes it to the SD card.
//!
//! Layers are measured as their bytes go into the content store (pull and import): gzip layers
//! are decompressed on the way (every member, as containerd reads them) into a counter that
//! stops at the bound; uncompressed layers are their own size. Other compressions (zstd) are
//! measured after `Diff.Apply` from the size containerd reports, and the snapshot is removed
//! when it is too large.

use std::io::Write;

use flate2::write::MultiGzDecoder;

/// Default bound on the uncompressed size of one layer, and of an uncompressed image archive.
pub const DEFAULT_MAX_UNPACKED: u64 = 4 << 30;

/// The message of a layer beyond the bound (also matched in tests).
pub(crate) fn too_large(what: &str, limit: u64) -> String {
    format!(
        "{what} unpacks to more than {limit} bytes, the limit (max_unpacked): refused as a decompression bomb"
    )
}

/// Whether a layer media type is gzip-compressed.
fn is_gzip(media_type: &str) -> bool {
    media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip")
}

/// Whether a layer media type is an uncompressed tar.
fn is_plain_tar(media_type: &str) -> bool {
    media_type.ends_with(".tar") || media_type == "application/vnd.docker.image.rootfs.diff.tar"
}

/// Counts bytes written to it and fails once they exceed the limit.
struct Counter {
    total: u64,
    limit: u64,
}

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.total = self.total.saturating_add(buf.len() as u64);
        if self.total > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Kind {
    Plain(Counter),
    Gzip(Box<MultiGzDecoder<Counter>>),
    /// A compression this module does not decode: checked after unpacking.
    Unmeasured,
}

/// Measures one layer's uncompressed size as its compressed bytes go by.
pub(crate) struct Meter {
    what: String,
    limit: u64,
    kind: Kind,
}

impl Meter {
    /// A meter for a layer of `media_type`, named `what` in errors.
    pub(crate) fn new(what: &str, media_type: &str, limit: u64) -> Self {
        let counter = Counter { total: 0, limit };
        let kind = if is_gzip(media_type) {
            Kind::Gzip(Box::new(MultiGzDecoder::new(counter)))
        } else if is_plain_tar(media_type) {
            Kind::Plain(counter)
        } else {
            Kind::Unmeasured
        };
        Self {
            what: what.to_owned(),
            limit,
            kind,
        }
    }

    fn over(&self) -> String {
        too_large(&self.what, self.limit)
    }

    /// Feeds the next compressed bytes.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        let over = self.over();
        match &mut self.kind {
            Kind::Plain(counter) => counter.write_all(chunk).map_err(|_| over),
            Kind::Gzip(decoder) => decoder.write_all(chunk).map_err(|e| {
                if decoder.get_ref().total > decoder.get_ref().limit {
                    over
                } else {
                    format!("{} is not valid gzip: {e}", self.what)
                }
            }),
            Kind::Unmeasured => Ok(()),
        }
    }

    /// Checks the end of the layer (a gzip stream cut short is an error).
    pub(crate) fn finish(self) -> Result<(), String> {
        let over = self.over();
        match self.kind {
            Kind::Gzip(mut decoder) => decoder.try_finish().map_err(|e| {
                if decoder.get_ref().total > decoder.get_ref().limit {
                    over
                } else {
                    format!("{} is not valid gzip: {e}", self.what)
                }
            }),
            Kind::Plain(_) | Kind::Unmeasured => Ok(()),
        }
    }
}

/// Feeds a stream of chunks through a meter: the first chunk beyond the bound becomes an
/// error, so the content store never commits the layer.
pub(crate) fn metered<S, E>(
    meter: Meter,
    chunks: S,
) -> impl futures::Stream<Item = Result<bytes::Bytes, String>>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin + Send + 'static,
    E: std::fmt::Display,
{
    use futures::StreamExt as _;
    futures::stream::unfold((Some(meter), chunks), |(meter, mut chunks)| async move {
        let mut meter = meter?;
        match chunks.next().await {
            Some(Ok(chunk)) => match meter.feed(&chunk) {
                Ok(()) => Some((Ok(chunk), (Some(meter), chunks))),
                Err(e) => Some((Err(e), (None, chunks))),
            },
            Some(Err(e)) => Some((Err(e.to_string()), (None, chunks))),
            None => meter.finish().err().map(|e| (Err(e), (None, chunks))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    #[test]
    fn gzip_layers_are_measured_decompressed_across_members() {
        let member = gzip(&vec![0u8; 1 << 20]);
        assert!(member.len() < 8 << 10, "{}", member.len());
        // 16 members of 1 MiB each: 16 MiB unpacked from a few KiB.
        let mut meter = Meter::new("layer L", GZ, 8 << 20);
        let mut result = Ok(());
        for _ in 0..16 {
            result = meter.feed(&member);
            if result.is_err() {
                break;
            }
        }
        let e = result.unwrap_err();
        assert!(
            e.contains("layer L unpacks to more than 8388608 bytes"),
            "{e}"
        );

        let mut meter = Meter::new("layer L", GZ, 32 << 20);
        for _ in 0..16 {
            meter.feed(&member).unwrap();
        }
        meter.finish().unwrap();
    }

    #[test]
    fn plain_layers_count_their_own_bytes_and_corrupt_gzip_is_an_error() {
        let mut meter = Meter::new("l", "application/vnd.oci.image.layer.v1.tar", 10);
        meter.feed(&[0; 10]).unwrap();
        assert!(meter.feed(&[0]).is_err());

        let mut meter = Meter::new("l", GZ, 1 << 20);
        let e = meter
            .feed(b"not gzip at all")
            .and_then(|()| meter.finish())
            .unwrap_err();
        assert!(e.contains("not valid gzip"), "{e}");

        let mut cut = gzip(&[1u8; 1000]);
        cut.truncate(cut.len() / 2);
        let mut meter = Meter::new("l", GZ, 1 << 20);
        let e = meter.feed(&cut).and_then(|()| meter.finish()).unwrap_err();
        assert!(e.contains("not valid gzip"), "{e}");

        // zstd: not decoded here (checked after unpacking).
        let mut meter = Meter::new("l", "application/vnd.oci.image.layer.v1.tar+zstd", 1);
        meter.feed(&[0; 100]).unwrap();
        meter.finish().unwrap();
    }
}

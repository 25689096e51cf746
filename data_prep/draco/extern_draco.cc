// The Draco decoder entry points that Blender's glTF add-on loads with ctypes
// (io_scene_gltf2/blender/imp/gltf2_io_draco_compression_extension.py), written against the
// system's Draco library (Debian: libdraco-dev). The bpy wheel ships no such library, so without
// it Draco-compressed glTF files cannot be imported; `make draco-library` builds this one.
// Decoding only: the renderer never writes glTF.

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "draco/compression/decode.h"
#include "draco/mesh/mesh.h"

namespace {

struct Decoder {
  std::unique_ptr<draco::Mesh> mesh;
  std::map<uint32_t, std::vector<uint8_t>> attributes;  // unique id -> converted values
  std::vector<uint8_t> indices;
};

// glTF accessor component types.
enum : size_t { BYTE = 5120, UBYTE = 5121, SHORT = 5122, USHORT = 5123, UINT = 5125, FLOAT = 5126 };

int components(const char *type) {
  const std::string t(type ? type : "");
  if (t == "SCALAR") return 1;
  if (t == "VEC2") return 2;
  if (t == "VEC3") return 3;
  if (t == "VEC4" || t == "MAT2") return 4;
  if (t == "MAT3") return 9;
  if (t == "MAT4") return 16;
  return 0;
}

template <typename T>
bool convert(const draco::Mesh &mesh, const draco::PointAttribute &attribute, int count,
             std::vector<uint8_t> &out) {
  const uint32_t points = mesh.num_points();
  out.assign(sizeof(T) * points * count, 0);
  T *values = reinterpret_cast<T *>(out.data());
  for (uint32_t i = 0; i < points; ++i) {
    const draco::AttributeValueIndex index = attribute.mapped_index(draco::PointIndex(i));
    if (!attribute.ConvertValue<T>(index, static_cast<int8_t>(count), values + i * count))
      return false;
  }
  return true;
}

template <typename T>
void face_indices(const draco::Mesh &mesh, std::vector<uint8_t> &out) {
  const uint32_t faces = mesh.num_faces();
  out.assign(sizeof(T) * faces * 3, 0);
  T *values = reinterpret_cast<T *>(out.data());
  for (uint32_t f = 0; f < faces; ++f) {
    const draco::Mesh::Face &face = mesh.face(draco::FaceIndex(f));
    for (int c = 0; c < 3; ++c) values[f * 3 + c] = static_cast<T>(face[c].value());
  }
}

Decoder *self(void *decoder) { return static_cast<Decoder *>(decoder); }

}  // namespace

extern "C" {

void *decoderCreate() { return new Decoder(); }

void decoderRelease(void *decoder) { delete self(decoder); }

bool decoderDecode(void *decoder, void *data, size_t size) {
  draco::DecoderBuffer buffer;
  buffer.Init(static_cast<const char *>(data), size);
  draco::Decoder draco_decoder;
  auto result = draco_decoder.DecodeMeshFromBuffer(&buffer);
  if (!result.ok() || !result.value()) return false;
  self(decoder)->mesh = std::move(result).value();
  return true;
}

uint32_t decoderGetVertexCount(void *decoder) {
  const auto &mesh = self(decoder)->mesh;
  return mesh ? mesh->num_points() : 0;
}

uint32_t decoderGetIndexCount(void *decoder) {
  const auto &mesh = self(decoder)->mesh;
  return mesh ? mesh->num_faces() * 3 : 0;
}

bool decoderAttributeIsNormalized(void *decoder, uint32_t id) {
  const auto &mesh = self(decoder)->mesh;
  const draco::PointAttribute *attribute = mesh ? mesh->GetAttributeByUniqueId(id) : nullptr;
  return attribute != nullptr && attribute->normalized();
}

bool decoderReadAttribute(void *decoder, uint32_t id, size_t component_type, char *data_type) {
  Decoder *d = self(decoder);
  const draco::PointAttribute *attribute =
      d->mesh ? d->mesh->GetAttributeByUniqueId(id) : nullptr;
  const int count = components(data_type);
  if (attribute == nullptr || count == 0) return false;
  std::vector<uint8_t> &out = d->attributes[id];
  switch (component_type) {
    case BYTE: return convert<int8_t>(*d->mesh, *attribute, count, out);
    case UBYTE: return convert<uint8_t>(*d->mesh, *attribute, count, out);
    case SHORT: return convert<int16_t>(*d->mesh, *attribute, count, out);
    case USHORT: return convert<uint16_t>(*d->mesh, *attribute, count, out);
    case UINT: return convert<uint32_t>(*d->mesh, *attribute, count, out);
    case FLOAT: return convert<float>(*d->mesh, *attribute, count, out);
    default: return false;
  }
}

size_t decoderGetAttributeByteLength(void *decoder, uint32_t id) {
  const auto &attributes = self(decoder)->attributes;
  const auto found = attributes.find(id);
  return found == attributes.end() ? 0 : found->second.size();
}

void decoderCopyAttribute(void *decoder, uint32_t id, void *out) {
  const auto &attributes = self(decoder)->attributes;
  const auto found = attributes.find(id);
  if (found != attributes.end()) std::memcpy(out, found->second.data(), found->second.size());
}

bool decoderReadIndices(void *decoder, size_t component_type) {
  Decoder *d = self(decoder);
  if (!d->mesh) return false;
  switch (component_type) {
    case UBYTE: face_indices<uint8_t>(*d->mesh, d->indices); return true;
    case USHORT: face_indices<uint16_t>(*d->mesh, d->indices); return true;
    case UINT: face_indices<uint32_t>(*d->mesh, d->indices); return true;
    default: return false;
  }
}

size_t decoderGetIndicesByteLength(void *decoder) { return self(decoder)->indices.size(); }

void decoderCopyIndices(void *decoder, void *out) {
  const auto &indices = self(decoder)->indices;
  std::memcpy(out, indices.data(), indices.size());
}

}  // extern "C"

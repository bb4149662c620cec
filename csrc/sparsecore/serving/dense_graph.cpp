#include "sparsecore/serving/dense_graph.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "sparsecore/core/error.h"
#include "sparsecore/core/file.h"
#include "sparsecore/quant/pow2_codes.h"
#include "sparsecore/quant/shift_panels.h"
#include "sparsecore/serving/dense_linear.h"

namespace sparsecore::serving {

namespace {

constexpr int64_t kMaxWidth = int64_t{1} << 24;  // floats per row of any value
constexpr size_t kMaxNodes = 4096;               // nodes of a graph, a sub-network included
constexpr uint64_t kMaxGraphJson = uint64_t{64} << 20;
constexpr uint64_t kMaxTensorBytes = uint64_t{16} << 30;

struct OpName {
  DenseOp op;
  const char* name;
};
constexpr OpName kOps[] = {{DenseOp::kInput, "input"},
                           {DenseOp::kLinear, "linear"},
                           {DenseOp::kShiftLinear, "shift_linear"},
                           {DenseOp::kRelu, "relu"},
                           {DenseOp::kSigmoid, "sigmoid"},
                           {DenseOp::kPrelu, "prelu"},
                           {DenseOp::kDice, "dice"},
                           {DenseOp::kConcat, "concat"},
                           {DenseOp::kAdd, "add"},
                           {DenseOp::kSum, "sum"},
                           {DenseOp::kDinAttention, "din_attention"}};

DenseOp op_from_name(const std::string& name, const std::string& where) {
  for (const auto& o : kOps)
    if (name == o.name) return o.op;
  throw CorruptData(where + ": unknown op '" + name + "'");
}

bool is_chain_op(DenseOp op) {
  return op == DenseOp::kLinear || op == DenseOp::kShiftLinear || op == DenseOp::kRelu || op == DenseOp::kSigmoid ||
         op == DenseOp::kPrelu || op == DenseOp::kDice;
}

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

const char* dense_op_name(DenseOp op) {
  for (const auto& o : kOps)
    if (o.op == op) return o.name;
  return "?";
}

struct DenseGraph::Node {
  DenseOp op = DenseOp::kInput;
  std::vector<int> in;  // earlier nodes (top level); empty in a sub-network chain
  int64_t width = 0;    // output floats per row
  int64_t in_width = 0;
  int input = -1;  // kInput: index into inputs_
  const float* w = nullptr;
  std::vector<float> packed;  // linear: w in panels (dense_linear.h), made at load
  const float* b = nullptr;   // linear bias, add constant
  const uint8_t* codes = nullptr;
  std::vector<uint32_t> shift_panels;  // shift_linear: codes in panels (quant/shift_panels.h), made at load
  const float* alpha = nullptr;        // shift_linear alpha, prelu / dice slope
  const float* mean = nullptr;
  const float* var = nullptr;
  float eps = 0.0f;
  int64_t slope_count = 0;  // prelu: 1 or width; add constant: 1 or width
  std::vector<Node> score;  // din_attention's sub-network
  int64_t score_max_width = 0;
};

namespace {

class Parser {
 public:
  Parser(const std::vector<uint8_t>& bytes, const Json& tensors) : bytes_(bytes), tensors_(tensors) {}

  // The tensor named by field `field` of node j, checked to hold exactly `count` elements of
  // `dtype` inside the tensor file. Null when the field is absent or null and optional.
  const void* tensor(const Json& node, const std::string& field, const char* dtype, int64_t count,
                     const std::string& where, bool optional = false) const {
    const Json* ref = node.get(field);
    if (ref == nullptr || ref->is_null()) {
      if (optional) return nullptr;
      throw CorruptData(where + ": missing tensor '" + field + "'");
    }
    const std::string& name = ref->as_string(field);
    const Json* t = tensors_.get(name);
    if (t == nullptr) throw CorruptData(where + ": tensor '" + name + "' is not in the tensor table");
    const std::string& type = t->at("dtype").as_string("dtype");
    if (type != dtype) throw CorruptData(where + ": tensor '" + name + "' has dtype " + type + ", expected " + dtype);
    int64_t elements = 1;
    for (const Json& d : t->at("shape").as_array("shape")) {
      const int64_t n = d.as_int("shape");
      if (n < 0 || n > kMaxWidth * kMaxWidth / std::max<int64_t>(elements, 1))
        throw CorruptData(where + ": tensor '" + name + "' has a bad shape");
      elements *= n;
    }
    if (elements != count)
      throw CorruptData(where + ": tensor '" + name + "' holds " + std::to_string(elements) + " values, expected " +
                        std::to_string(count));
    const int64_t offset = t->at("offset").as_int("offset");
    const uint64_t item = std::strcmp(dtype, "f32") == 0 ? 4 : 1;
    const uint64_t bytes = static_cast<uint64_t>(count) * item;
    if (offset < 0 || offset % static_cast<int64_t>(item) != 0 || static_cast<uint64_t>(offset) > bytes_.size() ||
        bytes > bytes_.size() - static_cast<uint64_t>(offset))
      throw CorruptData(where + ": tensor '" + name + "' lies outside the tensor file (offset " +
                        std::to_string(offset) + ", " + std::to_string(bytes) + " bytes of " +
                        std::to_string(bytes_.size()) + ")");
    return bytes_.data() + offset;
  }

  // Fills the parameters of a chain op reading in_width floats per row.
  void chain_op(const Json& j, DenseGraph::Node& n, const std::string& where) const {
    const int64_t in = n.in_width;
    switch (n.op) {
      case DenseOp::kLinear:
      case DenseOp::kShiftLinear: {
        n.width = j.at("out").as_int("out");
        if (n.width < 1 || n.width > kMaxWidth) throw CorruptData(where + ": out must be in [1, 2^24]");
        if (n.op == DenseOp::kLinear) {
          n.w = static_cast<const float*>(tensor(j, "weight", "f32", n.width * in, where));
          n.packed = pack_linear(n.w, n.width, in);
        } else {
          n.codes = static_cast<const uint8_t*>(tensor(j, "codes", "u8", n.width * quant::packed_cols(in), where));
          n.alpha = static_cast<const float*>(tensor(j, "alpha", "f32", n.width, where));
          for (int64_t r = 0; r < n.width; ++r)
            if (!(std::isfinite(n.alpha[r]) && n.alpha[r] > 0.0f)) throw CorruptData(where + ": alpha must be > 0");
          n.shift_panels.resize(static_cast<size_t>(quant::shift_panels_size(n.width, in)));
          quant::pack_shift_panels(n.codes, n.width, in, n.shift_panels.data());
        }
        n.b = static_cast<const float*>(tensor(j, "bias", "f32", n.width, where, true));
        break;
      }
      case DenseOp::kRelu:
      case DenseOp::kSigmoid:
        n.width = in;
        break;
      case DenseOp::kPrelu:
        n.width = in;
        n.slope_count = j.at("count").as_int("count");
        if (n.slope_count != 1 && n.slope_count != in) throw CorruptData(where + ": prelu needs 1 or width slopes");
        n.alpha = static_cast<const float*>(tensor(j, "weight", "f32", n.slope_count, where));
        break;
      case DenseOp::kDice:
        n.width = in;
        n.alpha = static_cast<const float*>(tensor(j, "alpha", "f32", in, where));
        n.mean = static_cast<const float*>(tensor(j, "mean", "f32", in, where));
        n.var = static_cast<const float*>(tensor(j, "var", "f32", in, where));
        n.eps = static_cast<float>(j.at("eps").as_double("eps"));
        if (!(std::isfinite(n.eps) && n.eps >= 0.0f)) throw CorruptData(where + ": eps must be >= 0");
        break;
      default:
        throw CorruptData(where + ": op '" + dense_op_name(n.op) + "' cannot be part of a chain");
    }
  }

 private:
  const std::vector<uint8_t>& bytes_;
  const Json& tensors_;
};

// One chain op over rows [0, batch) of x (batch, n.in_width) into y (batch, n.width).
void run_chain_op(const DenseGraph::Node& n, const float* x, int64_t batch, float* y) {
  const int64_t in = n.in_width, w = n.width;
  switch (n.op) {
    case DenseOp::kLinear:
      linear_packed(x, batch, n.packed.data(), n.b, in, w, y);
      return;
    case DenseOp::kShiftLinear: {
      // Small layers run on the calling thread (shift_panels_matmul's own threshold).
      quant::shift_panels_matmul(x, batch, n.shift_panels.data(), n.alpha, n.b, w, in, y);
      return;
    }
    case DenseOp::kRelu:
      for (int64_t i = 0; i < batch * w; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
      return;
    case DenseOp::kSigmoid:
      for (int64_t i = 0; i < batch * w; ++i) y[i] = sigmoid(x[i]);
      return;
    case DenseOp::kPrelu:
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t c = 0; c < w; ++c) {
          const float v = x[b * w + c];
          y[b * w + c] = v > 0.0f ? v : n.alpha[n.slope_count == 1 ? 0 : c] * v;
        }
      return;
    case DenseOp::kDice:
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t c = 0; c < w; ++c) {
          const float v = x[b * w + c];
          const float p = sigmoid((v - n.mean[c]) / std::sqrt(n.var[c] + n.eps));
          y[b * w + c] = p * v + (1.0f - p) * n.alpha[c] * v;
        }
      return;
    default:
      throw InvalidArgument(std::string("dense graph: op '") + dense_op_name(n.op) + "' is not a chain op");
  }
}

}  // namespace

DenseGraph::DenseGraph(const Json& graph, std::vector<uint8_t> tensors) : tensors_(std::move(tensors)) {
  const std::string format = graph.at("format").as_string("format");
  if (format != "sparsecore-dense") throw CorruptData("dense graph: format is '" + format + "'");
  const int64_t version = graph.at("version").as_int("version");
  if (version != 1) throw CorruptData("dense graph: version " + std::to_string(version) + " is not supported (1)");
  for (const Json& in : graph.at("inputs").as_array("inputs")) {
    DenseInputSpec s{in.at("name").as_string("name"), in.at("kind").as_string("kind"), in.at("width").as_int("width")};
    if (s.kind != "pooled" && s.kind != "sequence" && s.kind != "dense")
      throw CorruptData("dense graph: input '" + s.name + "' has kind '" + s.kind + "'");
    if (s.width < 1 || s.width > kMaxWidth) throw CorruptData("dense graph: input '" + s.name + "' has a bad width");
    inputs_.push_back(std::move(s));
  }
  const Json& table = graph.at("tensors");
  table.as_object("tensors");
  const Parser parser(tensors_, table);
  const auto& nodes = graph.at("nodes").as_array("nodes");
  if (nodes.empty() || nodes.size() > kMaxNodes) throw CorruptData("dense graph: needs 1 to 4096 nodes");
  size_t total = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Json& j = nodes[i];
    const std::string where = "dense graph node " + std::to_string(i);
    auto n = std::make_shared<Node>();
    n->op = op_from_name(j.at("op").as_string("op"), where);
    if (n->op == DenseOp::kInput) {
      const int64_t k = j.at("input").as_int("input");
      if (k < 0 || k >= static_cast<int64_t>(inputs_.size()))
        throw CorruptData(where + ": no input " + std::to_string(k));
      n->input = static_cast<int>(k);
      n->width = inputs_[k].width;
    } else {
      for (const Json& r : j.at("inputs").as_array("inputs")) {
        const int64_t k = r.as_int("inputs");
        if (k < 0 || k >= static_cast<int64_t>(i))
          throw CorruptData(where + ": input " + std::to_string(k) + " is not an earlier node");
        n->in.push_back(static_cast<int>(k));
      }
      if (n->in.empty()) throw CorruptData(where + ": has no inputs");
      auto width_of = [&](int k) { return nodes_[k]->width; };
      auto is_sequence = [&](int k) {
        return nodes_[k]->op == DenseOp::kInput && inputs_[nodes_[k]->input].kind == "sequence";
      };
      if (n->op == DenseOp::kDinAttention) {
        if (n->in.size() != 2 || !is_sequence(n->in[0]) || is_sequence(n->in[1]) ||
            width_of(n->in[0]) != width_of(n->in[1]))
          throw CorruptData(where + ": din_attention needs a sequence and a query of the same width");
        n->width = width_of(n->in[0]);
        int64_t in = 4 * n->width;
        for (const Json& s : j.at("score").as_array("score")) {
          Node sub;
          sub.op = op_from_name(s.at("op").as_string("op"), where + " score");
          if (!is_chain_op(sub.op)) throw CorruptData(where + ": the score network holds op " + dense_op_name(sub.op));
          sub.in_width = in;
          parser.chain_op(s, sub, where + " score");
          in = sub.width;
          n->score_max_width = std::max(n->score_max_width, in);
          n->score.push_back(sub);
          if (n->score.size() > kMaxNodes) throw CorruptData(where + ": score network too long");
        }
        if (n->score.empty() || in != 1) throw CorruptData(where + ": the score network must end in width 1");
      } else {
        for (int k : n->in)
          if (is_sequence(k)) throw CorruptData(where + ": only din_attention reads a sequence input");
        if (is_chain_op(n->op)) {
          if (n->in.size() != 1) throw CorruptData(where + ": op " + dense_op_name(n->op) + " takes one input");
          n->in_width = width_of(n->in[0]);
          parser.chain_op(j, *n, where);
        } else if (n->op == DenseOp::kConcat) {
          for (int k : n->in) n->width += width_of(k);
          if (n->width > kMaxWidth) throw CorruptData(where + ": concat too wide");
        } else if (n->op == DenseOp::kAdd) {
          n->width = width_of(n->in[0]);
          for (int k : n->in)
            if (width_of(k) != n->width) throw CorruptData(where + ": add needs inputs of one width");
          const Json* c = j.get("constant");
          if (c != nullptr && !c->is_null()) {
            n->slope_count = j.at("count").as_int("count");
            if (n->slope_count != 1 && n->slope_count != n->width)
              throw CorruptData(where + ": add's constant needs 1 or width values");
            n->b = static_cast<const float*>(parser.tensor(j, "constant", "f32", n->slope_count, where));
          }
        } else if (n->op == DenseOp::kSum) {
          if (n->in.size() != 1) throw CorruptData(where + ": sum takes one input");
          n->in_width = width_of(n->in[0]);
          n->width = 1;
        }
      }
    }
    offsets_.push_back(total);
    if (!(n->op == DenseOp::kInput && inputs_[n->input].kind == "sequence")) total += static_cast<size_t>(n->width);
    if (total > static_cast<size_t>(kMaxWidth)) throw CorruptData("dense graph: values too wide per row");
    nodes_.push_back(std::move(n));
  }
  const int64_t output = graph.at("output").as_int("output");
  if (output != static_cast<int64_t>(nodes_.size()) - 1)
    throw CorruptData("dense graph: the output must be the last node");
  if (nodes_.back()->op == DenseOp::kInput && inputs_[nodes_.back()->input].kind == "sequence")
    throw CorruptData("dense graph: the output cannot be a sequence");
  row_floats_ = total;
}

DenseGraph DenseGraph::load(const std::string& dir) {
  const auto text = read_regular_file(dir + "/dense.json", kMaxGraphJson);
  const Json graph = Json::parse(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
  return DenseGraph(graph, read_regular_file(dir + "/dense.bin", kMaxTensorBytes));
}

int64_t DenseGraph::output_width() const { return nodes_.back()->width; }

void DenseGraph::check_views(const DenseInputView* inputs, int64_t batch) const {
  SC_CHECK_ARG(batch >= 0, "dense graph: batch must be >= 0, got ", batch);
  for (size_t k = 0; k < inputs_.size(); ++k) {
    const DenseInputView& v = inputs[k];
    SC_CHECK_ARG(v.values != nullptr || batch == 0, "dense graph: input '", inputs_[k].name, "' is missing");
    if (inputs_[k].kind != "sequence") continue;
    SC_CHECK_ARG(v.max_len >= 0 && (v.lengths != nullptr || batch == 0), "dense graph: sequence input '",
                 inputs_[k].name, "' needs lengths");
    for (int64_t b = 0; b < batch; ++b)
      SC_CHECK_ARG(v.lengths[b] >= 0 && v.lengths[b] <= v.max_len, "dense graph: sequence input '", inputs_[k].name,
                   "' row ", b, " has length ", v.lengths[b], " outside [0, ", v.max_len, "]");
  }
}

void DenseGraph::run(const DenseInputView* inputs, int64_t batch, float* out, DenseWorkspace& ws) const {
  check_views(inputs, batch);
  if (batch == 0) return;
  int64_t scratch = 0;  // din_attention: one step's features and two chain buffers
  for (const auto& n : nodes_)
    if (n->op == DenseOp::kDinAttention) scratch = std::max(scratch, 4 * n->width + 2 * n->score_max_width);
  float* base = ws.reserve(row_floats_ * static_cast<size_t>(batch) + static_cast<size_t>(scratch));
  float* tmp = base + row_floats_ * static_cast<size_t>(batch);
  // Node i's output: (batch, width) at base + offsets_[i] * batch.
  auto value = [&](int k) -> const float* {
    const Node& n = *nodes_[k];
    if (n.op == DenseOp::kInput) return inputs[n.input].values;
    return base + offsets_[k] * static_cast<size_t>(batch);
  };
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = *nodes_[i];
    float* y = base + offsets_[i] * static_cast<size_t>(batch);
    const int64_t w = n.width;
    switch (n.op) {
      case DenseOp::kInput:
        break;
      case DenseOp::kConcat: {
        int64_t col = 0;
        for (int k : n.in) {
          const float* x = value(k);
          const int64_t kw = nodes_[k]->width;
          for (int64_t b = 0; b < batch; ++b) std::memcpy(y + b * w + col, x + b * kw, sizeof(float) * kw);
          col += kw;
        }
        break;
      }
      case DenseOp::kAdd:
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t c = 0; c < w; ++c) {
            float s = value(n.in[0])[b * w + c];
            for (size_t k = 1; k < n.in.size(); ++k) s += value(n.in[k])[b * w + c];
            if (n.b) s += n.b[n.slope_count == 1 ? 0 : c];
            y[b * w + c] = s;
          }
        break;
      case DenseOp::kSum: {
        const float* x = value(n.in[0]);
        for (int64_t b = 0; b < batch; ++b) {
          float s = 0.0f;
          for (int64_t c = 0; c < n.in_width; ++c) s += x[b * n.in_width + c];
          y[b] = s;
        }
        break;
      }
      case DenseOp::kDinAttention: {
        const DenseInputView& seq = inputs[nodes_[n.in[0]]->input];
        const float* query = value(n.in[1]);
        float* feat = tmp;
        float* buf[2] = {tmp + 4 * w, tmp + 4 * w + n.score_max_width};
        for (int64_t b = 0; b < batch; ++b) {
          float* o = y + b * w;
          std::fill(o, o + w, 0.0f);
          const float* a = query + b * w;
          for (int64_t t = 0; t < seq.lengths[b]; ++t) {
            const float* h = seq.values + (b * seq.max_len + t) * w;
            for (int64_t c = 0; c < w; ++c) {
              feat[c] = h[c];
              feat[w + c] = a[c];
              feat[2 * w + c] = h[c] - a[c];
              feat[3 * w + c] = h[c] * a[c];
            }
            const float* x = feat;
            int which = 0;
            for (const Node& s : n.score) {
              run_chain_op(s, x, 1, buf[which]);
              x = buf[which];
              which ^= 1;
            }
            const float weight = sigmoid(x[0]);
            for (int64_t c = 0; c < w; ++c) o[c] += weight * h[c];
          }
        }
        break;
      }
      default:
        run_chain_op(n, value(n.in[0]), batch, y);
    }
  }
  std::memcpy(out, value(static_cast<int>(nodes_.size()) - 1),
              sizeof(float) * static_cast<size_t>(batch * output_width()));
}

}  // namespace sparsecore::serving

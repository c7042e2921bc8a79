// PAT_ch's exported gate as one OpenVINO extension op, for docs/bench/ov_extension_ab.py (a measurement, not
// shipped): GateScale(x, W, b) = clamp(([mean, biased std] of x over H, W) W + b) / 6 + 1/2, 0, 1), shaped
// (B, C, 1, 1), with x (B, C, H, W), W (2C, C) and b (C), fp32. It replaces the exported gate's ten nodes from
// its first ReduceMean to its Reshape. Built with -ffast-math: the sums may be reordered (fp32 rounding only).
#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Per-channel mean and biased std of `channels` planes of `count` values: stats[c], stats[channels + c].
void plane_moments(const float* x, size_t channels, size_t count, float* stats) {
    for (size_t c = 0; c < channels; ++c) {
        const float* plane = x + c * count;
        float sum = 0.f;
        for (size_t i = 0; i < count; ++i) sum += plane[i];
        const float mean = sum / count;
        float squares = 0.f;
        for (size_t i = 0; i < count; ++i) squares += (plane[i] - mean) * (plane[i] - mean);
        stats[c] = mean;
        stats[channels + c] = std::sqrt(squares / count);
    }
}

// hardsigmoid(stats W + b) for one sample: W is (2C, C) row-major.
void gate_from_moments(const float* stats, const float* weight, const float* bias, size_t channels, float* out) {
    std::copy(bias, bias + channels, out);
    for (size_t k = 0; k < 2 * channels; ++k) {
        const float* row = weight + k * channels;
        for (size_t j = 0; j < channels; ++j) out[j] += stats[k] * row[j];
    }
    for (size_t j = 0; j < channels; ++j) out[j] = std::clamp(out[j] / 6.f + .5f, 0.f, 1.f);
}

}  // namespace

class GateScale : public ov::op::Op {
public:
    OPENVINO_OP("GateScale", "patnet");
    GateScale() = default;
    explicit GateScale(const ov::OutputVector& args) : Op(args) { constructor_validate_and_infer_types(); }

    void validate_and_infer_types() override {
        const auto shape = get_input_partial_shape(0);
        set_output_type(0, get_input_element_type(0), ov::PartialShape{shape[0], shape[1], 1, 1});
    }
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return std::make_shared<GateScale>(args);
    }
    bool visit_attributes(ov::AttributeVisitor&) override { return true; }
    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& shape = inputs[0].get_shape();
        const size_t batch = shape[0], channels = shape[1], count = shape[2] * shape[3];
        outputs[0].set_shape({batch, channels, 1, 1});
        std::vector<float> stats(2 * channels);
        for (size_t n = 0; n < batch; ++n) {
            plane_moments(inputs[0].data<float>() + n * channels * count, channels, count, stats.data());
            gate_from_moments(stats.data(), inputs[1].data<float>(), inputs[2].data<float>(), channels,
                              outputs[0].data<float>() + n * channels);
        }
        return true;
    }
};

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>(
    {std::make_shared<ov::OpExtension<GateScale>>(),
     std::make_shared<ov::frontend::onnx::OpExtension<GateScale>>("GateScale", "patnet")}));

"""The model wing: timm encoders in decoders (archs), norms, offline pretrained weights, the loss, the metric.

encoders · unet (DynamicUnet) · smp (segmentation_models_pytorch decoders) · build (the arch registry and the
factory) · norms · pretrained · loss (the loss-term registry) · metrics. Never imports app.data.
"""

"""Writing the export and sharing it: the file layout, the writer and its generation
programs (torch.export, ONNX, Hugging Face), the MLflow pyfunc, the registry and the
pipeline's export stage."""

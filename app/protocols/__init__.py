"""Other APIs' requests and replies mapped onto the gateway's own (``GenerateRequest``, the job
record): the OpenAI Images API (``openai_images``) and AUTOMATIC1111's (``a1111``)."""

"""The HTTP layer of the ingress: routes (`api`), wire formats (`codecs`), request and response models
(`schemas`), error responses (`errors`), access control (`security`) and the middleware stack that
applies it (`middleware`). Imports `lensing` and the app's settings; nothing here calls a deployment."""

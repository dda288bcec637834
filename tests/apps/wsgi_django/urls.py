"""The test project's views: a JSON view, a body echo (no CSRF: no session), and a streaming view."""

from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"framework": "django", "path": request.path, "q": request.GET.get("q")})


@csrf_exempt
def echo(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"size": len(request.body), "method": request.method})


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse((b"chunk-%d\n" % i for i in range(3)), content_type="text/plain")


urlpatterns = [path("hello/", hello), path("echo/", echo), path("stream/", stream)]

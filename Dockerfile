# adaptd on Debian 12: builds everything and runs the tests at image build time.
#   docker build -t adaptd .
#   docker run --rm -p 50051:50051 -p 9090:9090 -v adaptd-data:/var/lib/adaptd adaptd
FROM debian:bookworm-slim
WORKDIR /src/adaptd
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN bash deploy/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN bash deploy/build.sh && ctest --test-dir build --output-on-failure -j "$(nproc)"
EXPOSE 50051 9090
VOLUME /var/lib/adaptd
ENTRYPOINT ["/src/adaptd/build/server/adaptd", "--host=0.0.0.0", "--port=50051", \
            "--metrics_port=9090", "--data_dir=/var/lib/adaptd"]
